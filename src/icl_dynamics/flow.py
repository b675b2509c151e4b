"""The gradient flow d scores/dt = -dL/dscores (``train.method=flow``), integrated by diffrax.

Time is measured in lr x steps, so a flow run logs the same schedule as a GD run and its ``steps`` column
is t / lr: GD at small lr approaches the flow step for step. Phase boundaries (spec section 6) come from the
solver's event detection, not from logged rows: each event is a zero crossing of a smooth function of the
state (below), located by a root finder inside the adaptive step, starting from the previous event of the
same query feature. One feature per class of equal probability is solved for (the others are identical).

| event of query k                     | g(state), crossing from above  |
|--------------------------------------|--------------------------------|
| feature_loss[k] <= eps               | feature_loss[k] - eps          |
| attention[k,k] >= 1/2                | 1/2 - attention[k,k]           |
| attention[k,k] > attention[k,d]      | attention[k,d] - attention[k,k]|
| B_{k,n} peaks (mean over minor n)    | d/dt mean_n B_{k,n} = -mean_n grad[k,n] |
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix

from .engines import Engine
from .phases import NAMES, dominant_feature
from .trainer import TrainResult, Watch
from .trajectory import Metrics, stack_rows

SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8, "kvaerno5": diffrax.Kvaerno5}
MAX_STEPS = 1_000_000
LOSS, HALF, OVERTAKE, PEAK = range(4)
TEXT = {LOSS: "feature_loss[k] <= eps", HALF: "attention[k,k] >= 1/2", OVERTAKE: "attention[k,k] > attention[k,{d}]",
        PEAK: "B_{{k,n}} peaks (mean over the other minor features n)"}


def _term(grad, static) -> diffrax.ODETerm:
    """d scores/dt = -grad; consts ride in ``args`` (traced), so one compilation serves every run of a shape."""
    return diffrax.ODETerm(lambda t, y, consts: -grad(static, consts, y, 0))


def _controller(rtol: float, atol: float, solver: str):
    return diffrax.PIDController(rtol=rtol, atol=atol), SOLVERS[solver]()


def _g(grad, observe, static, consts, y, kind, k, d, others, eps):
    """The event functions of the table above; ``kind`` picks one (traced, so one compilation serves all;
    the gradient is computed only for the peak event)."""
    def from_metrics(kind):
        m = observe(static, consts, y)
        return jnp.stack([m.feature_loss[k] - eps, 0.5 - m.attention[k, k], m.attention[k, d] - m.attention[k, k]])[kind]

    def rise(_):
        g = grad(static, consts, y, 0)
        return -jnp.sum(jnp.where(others, g[k], 0.0)) / jnp.maximum(jnp.sum(others), 1)

    return jax.lax.cond(kind == PEAK, rise, from_metrics, jnp.minimum(kind, OVERTAKE))


@partial(jax.jit, static_argnames=("grad", "observe", "static", "rtol", "atol", "solver"))
def _solve_to_event(grad, observe, static, consts, y0, t0, t1, kind, k, d, others, eps, rtol, atol, solver):
    pid, method = _controller(rtol, atol, solver)
    event = diffrax.Event(lambda t, y, args, **kw: _g(grad, observe, static, args, y, kind, k, d, others, eps),
                          root_finder=optimistix.Bisection(rtol=1e-12, atol=1e-12, flip="detect"), direction=False)
    sol = diffrax.diffeqsolve(_term(grad, static), method, t0, t1, None, y0, args=consts, stepsize_controller=pid,
                              event=event, max_steps=MAX_STEPS, saveat=diffrax.SaveAt(t1=True), throw=False)
    return sol.ts[-1], sol.ys[-1], sol.event_mask, sol.stats["num_steps"]


@partial(jax.jit, static_argnames=("grad", "observe", "static", "rtol", "atol", "solver"))
def _solve_logged(grad, observe, static, consts, y0, ts, rtol, atol, solver):
    pid, method = _controller(rtol, atol, solver)
    sol = diffrax.diffeqsolve(_term(grad, static), method, ts[0], ts[-1], None, y0, args=consts,
                              stepsize_controller=pid, saveat=diffrax.SaveAt(ts=ts), max_steps=MAX_STEPS, throw=False)
    metrics = jax.vmap(lambda y: observe(static, consts, y))(sol.ys)
    return sol.ys, metrics, sol.result == diffrax.RESULTS.successful, sol.stats["num_steps"]


@partial(jax.jit, static_argnames=("observe", "static"))
def _observe_rows(observe, static, consts, ys):
    return jax.vmap(lambda y: observe(static, consts, y))(ys)


def integrate(engine: Engine, schedule: np.ndarray, lr: float, rtol: float, atol: float,
              solver: str, watch: Watch | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """The flow through the logged times lr x schedule; the trajectory's steps are the schedule. With
    ``watch`` (trainer.Watch), its metrics at the same times are ``TrainResult.watched``."""
    with jax.enable_x64(True):
        ys, metrics, ok, nsteps = jax.device_get(_solve_logged(
            engine.grad, engine.observe, engine.static, engine.consts, engine.init,
            jnp.asarray(lr * schedule.astype(np.float64)), rtol=rtol, atol=atol, solver=solver))
        watched = None if watch is None else jax.device_get(_observe_rows(*watch, ys))
    ok = bool(ok) and all(np.all(np.isfinite(np.asarray(x))) for x in metrics)
    traj = stack_rows([schedule], [Metrics(*(np.asarray(x) for x in metrics))])
    stats = {"solver": solver, "rtol": rtol, "atol": atol, "solver_steps": int(nsteps),
             "function_evaluations": int(nsteps) * _stages(solver)}
    return TrainResult(traj, ys[-1], "completed" if ok else "failed", None,
                       None if watched is None else stack_rows([schedule], [Metrics(*watched)])), stats


def _stages(solver: str) -> int:
    """Right-hand side evaluations per step of each solver (first-same-as-last counted once)."""
    return {"tsit5": 6, "dopri5": 6, "dopri8": 12, "kvaerno5": 7}[solver]


def events(engine: Engine, probs: np.ndarray, eps: float, setting: str, lr: float, t_end: float, rtol: float,
           atol: float, solver: str) -> dict:
    """phases.json from the solver's events: one representative per class of equal probability, its chain
    of events (spec section 6) each solved from the previous one; times in steps (t / lr), 0-based."""
    K = len(probs)
    d = dominant_feature(probs, setting)
    steps_used = [0]

    def solve(y0, t0, kind, k, dd, others):
        out = _solve_to_event(engine.grad, engine.observe, engine.static, engine.consts, y0, t0,
                              jnp.asarray(t_end, jnp.float64), kind, k, dd, others, jnp.asarray(eps, jnp.float64),
                              rtol=rtol, atol=atol, solver=solver)
        steps_used[0] += int(out[3])
        return out

    reps: dict[tuple, list[float | None]] = {}
    out = []
    for k in range(K):
        group = "balanced" if d is None else "dominant" if k == d else "minor"
        kinds = {"balanced": [HALF, LOSS], "dominant": [LOSS], "minor": [PEAK, OVERTAKE, HALF, LOSS]}[group]
        others = np.array([n not in (k, d) and probs[n] > 0 for n in range(K)])
        key = (group, float(probs[k]))
        if key not in reps:
            reps[key] = _chain_times(solve, engine, kinds, k, d if d is not None else k, others, lr)
        times = reps[key]
        phases, start = [], 0
        for name, kind, t in zip(NAMES, kinds, times):
            end = None if t is None else int(math.ceil(t - 1e-9))
            text = TEXT[kind].format(d=d)
            phases.append({"name": name, "start": start, "end": end, "event": text,
                           **({"time": t} if t is not None else {})})
            start = end
        out.append({"feature": k, "group": group, "phases": phases})
    return {"setting": setting, "eps": float(eps), "source": "solver events (train.method=flow)",
            "solver_steps": steps_used[0], "features": out}


def _chain_times(solve, engine: Engine, kinds: list[int], k: int, d: int, others: np.ndarray,
                 lr: float) -> list[float | None]:
    """Event times (in steps) of one query feature's chain; None from the first event not reached."""
    with jax.enable_x64(True):
        y, t, times = engine.init, 0.0, []
        for kind in kinds:
            if t is None:
                times.append(None)
                continue
            if kind == PEAK:
                if not others.any():  # K = 2: no other minor feature, no B_{k,n}: Phase I is empty
                    times.append(t / lr)
                    continue
                if float(_g(engine.grad, engine.observe, engine.static, engine.consts, y, PEAK, k, d,
                            jnp.asarray(others), 0.0)) <= 0:
                    t = None  # B_{k,n} never rises (p_1 <= 1/sqrt(K), spec section 6): no peak, no four phases
                    times.append(None)
                    continue
            t1, y1, hit, _ = solve(y, jnp.asarray(t, jnp.float64), kind, k, d, jnp.asarray(others))
            if not bool(hit):
                t = None
                times.append(None)
                continue
            t, y = float(t1), y1
            times.append(t / lr)
    return times


def run_flow(engine: Engine, cfg, eps: float | None = None, watch: Watch | None = None
             ) -> tuple[TrainResult, dict, dict]:
    """A flow run of ``cfg``: (result on the config's log schedule, phases from the solver's events at
    ``eps`` (default the config's), the solver's statistics for summary.json); ``watch`` as for
    :func:`integrate`."""
    from .data import feature_probs, setting_name
    from .schedule import log_schedule

    t = cfg.train
    schedule = log_schedule(t.steps, t.log_every)
    result, stats = integrate(engine, schedule, t.lr, t.flow_rtol, t.flow_atol, t.flow_solver, watch)
    phases = events(engine, feature_probs(cfg.data), cfg.eps if eps is None else eps, setting_name(cfg.data),
                    t.lr, float(t.lr * schedule[-1]), t.flow_rtol, t.flow_atol, t.flow_solver)
    event_steps = phases.pop("solver_steps")
    stats.update(event_solver_steps=event_steps,  # evaluations of the gradient field, trajectory and events
                 function_evaluations=(stats["solver_steps"] + event_steps) * _stages(t.flow_solver))
    return result, phases, stats
