"""Section ``exact``: the closed-form expectation over token counts (``train.expectation=exact``, spec
section 9) against issue 11's performance goals, each measured side by side in this run.

1. The default run (K = 16, N = 256, imbalanced, 3000 GD steps): exact against the same run with
   ``train.expectation=monte_carlo`` (M = 4096), whole ``trainer.train`` calls, compiled (warm-up and its
   compile time apart), alternated so both see the same load. Its error: the max relative difference of
   feature_loss over the trajectory against enumeration of every count vector (K = 4, N = 20) and, at the
   default setting itself, against the symmetric exact reference (exact_reference.SymmetricExact).
2. Cost flat in N: the time per GD step at N = 256 and N = 10^6 (same quadrature node count, checked).
3. Against the tokens engine at 1% accuracy: the closed form has no sampling error, so its cost is one
   run; the tokens side (its B and run time for a 1% error) is population_vs_tokens's, reused.
4. The gradient flow (``train.method=flow``) against GD at lr = 0.1 to the minor features' eps: gradient
   evaluations of every solve (the trajectory and the event chains, counted by a host callback in the
   engine's gradient) against the GD steps, and the flow's event times against GD's phase ends.
5. K = 64, exact, 3000 steps, imbalanced: the wall time of a run, compilation included.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import numpy as np
import optax

from icl_dynamics import trainer
from icl_dynamics.data import feature_probs
from icl_dynamics.engines import build_engine
from icl_dynamics.flow import run_flow
from icl_dynamics.phases import detect_phases

from . import accuracy
from .common import comparison, config, ms, observe_call, sec, table, times
from .exact_reference import SymmetricExact

NAME = "exact"
EXACT = {"train__expectation": "exact"}
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
ERROR_GOAL = 1e-10  # goal 1: max relative difference from an enumeration-grade reference
FLAT_GOAL = 1.5  # goal 2: step time at the largest N within this factor of the smallest's
TOKENS_GOAL = 1000  # goal 3: tokens time at 1% / exact time
FLOW_GOAL = 10  # goal 4: GD steps / flow gradient evaluations
PHASE_GOAL = 0.01  # goal 4: max relative difference of phase times
BUDGET_S = 60.0  # goal 5


@dataclass(frozen=True)
class Knobs:
    repeats: int = 3  # timed calls per side of goal 1 (alternated)
    steps: int = 3000  # the default run (goals 1 and 5)
    count_samples: int = 4096  # M of goal 1's monte_carlo side
    enum_K: int = 4  # goal 1's enumeration check
    enum_N: int = 20
    symmetric_check: bool = True  # goal 1 at the default setting against SymmetricExact
    flat_N: tuple = (256, 10**6)  # goal 2
    flat_steps: int = 500  # GD steps per timed call (goal 2)
    flat_repeats: int = 11
    accuracy: accuracy.Knobs = accuracy.FULL  # goal 3: population_vs_tokens's knobs, whose tokens fit is reused
    flow_expectation: str = "exact"  # goal 4
    flow_K: int = 16
    flow_N: int = 256
    flow_lr: float = 0.1
    flow_steps: int = 21000  # GD at lr = 0.1 reaches the minor features' eps near step 20705
    big_K: int = 64  # goal 5
    big_steps: int = 3000
    general_steps: int = 10  # steps per timed call for K = big_K without equal-probability classes (zipf)
    general_repeats: int = 3


FULL = Knobs()
QUICK = Knobs(repeats=1, steps=100, count_samples=512, enum_K=3, enum_N=8, symmetric_check=False,
              flat_N=(256, 10**6), flat_steps=50, flat_repeats=3, accuracy=accuracy.QUICK,
              flow_expectation="mean_field", flow_K=4, flow_N=32, flow_lr=0.1, flow_steps=2200,
              big_K=64, big_steps=100, general_steps=2, general_repeats=1)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def compile_clock():
    """Seconds spent tracing, lowering and compiling in a block, and the number of XLA compilations."""
    got = {"compile_s": 0.0, "compilations": 0}

    def listener(name: str, duration: float, **kwargs) -> None:
        if name in COMPILE_EVENTS:
            got["compile_s"] += duration
            got["compilations"] += name == COMPILE_EVENTS[-1]

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield got
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict]:
    """Each function once as a warm-up (its compile time measured apart), then ``repeats`` rounds calling
    each in turn, so both sides see the same load. Median, min, max of the timed calls."""
    out, ts = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        with compile_clock() as cc:
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            first = time.perf_counter() - t0
        out[name] = {"first_s": first, **cc}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts[name].append(time.perf_counter() - t0)
    for name, r in out.items():
        r.update(median_s=statistics.median(ts[name]), min_s=min(ts[name]), max_s=max(ts[name]), repeats=repeats)
    return out


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _steps(grad, optimizer, static, n, consts, lr, state):
    """``n`` optimizer steps from ``state`` in one compiled loop (no observation, no finiteness check)."""
    tx = optimizer.transform(lr)

    def body(i, st):
        p, o = st
        u, o = tx.update(grad(static, consts, p, i), o, p)
        return optax.apply_updates(p, u), o

    return jax.lax.fori_loop(0, n, body, state)


def steps_call(e, n: int) -> Callable[[], Any]:
    state = trainer.initial_state(e)
    return lambda: _steps(e.grad, e.optimizer, e.static, n, e.consts, e.lr, state)


# --- goal 1 ---

def default_run(k: Knobs) -> dict:
    """Exact against monte_carlo on the default run, and exact's error against enumeration-grade references."""
    jax.clear_caches()  # earlier sections compiled the monte_carlo run: measure both compilations afresh
    schedule = trainer.log_schedule(k.steps)
    ex = build_engine(config(**EXACT, train__steps=k.steps))
    mc = build_engine(config(train__expectation="monte_carlo", train__count_samples=k.count_samples,
                             train__steps=k.steps))
    res = {}

    def run_of(name, e):
        def fn():
            res[name] = trainer.train(e, schedule, progress=False)
            return res[name].trajectory.loss
        return fn

    out = {"steps": k.steps, "logged_rows": len(schedule), "M": k.count_samples, "nodes": ex.static.nodes,
           "load_start": load()}
    out["timing"] = alternate({"exact": run_of("exact", ex), "monte_carlo": run_of("monte_carlo", mc)}, k.repeats)
    out["load_end"] = load()
    out["ratio"] = out["timing"]["monte_carlo"]["median_s"] / out["timing"]["exact"]["median_s"]
    fl = res["exact"].trajectory.feature_loss
    out["monte_carlo_rel_dev_from_exact"] = max_rel(res["monte_carlo"].trajectory.feature_loss, fl)
    if k.symmetric_check:  # the default setting itself, against the symmetric sum over every count vector
        d = res["exact"].trajectory
        ref, _ = SymmetricExact(16, 256, 0.5).run(1.0, k.steps, d.steps)
        out["vs_symmetric"] = {"K": 16, "N": 256, "max_rel_diff": max_rel(fl, ref)}
    small = {"data__num_features": k.enum_K, "data__prompt_length": k.enum_N, "train__steps": k.steps}
    ee = build_engine(config(**EXACT, **small))
    en = build_engine(config(train__expectation="enumerate", **small))
    a = trainer.train(ee, schedule, progress=False).trajectory.feature_loss
    b = trainer.train(en, schedule, progress=False).trajectory.feature_loss
    out["vs_enumerate"] = {"K": k.enum_K, "N": k.enum_N, "count_vectors": int(en.consts.table.counts.shape[0]),
                           "max_rel_diff": max_rel(a, b), "min_feature_loss": float(b.min())}
    errs = [out["vs_enumerate"]["max_rel_diff"]] + ([out["vs_symmetric"]["max_rel_diff"]] if k.symmetric_check else [])
    out["max_rel_diff"] = max(errs)
    return out


# --- goal 2 ---

def flat_in_n(k: Knobs) -> dict:
    es = {N: build_engine(config(**EXACT, data__prompt_length=N)) for N in k.flat_N}
    nodes = {str(N): e.static.nodes for N, e in es.items()}
    with jax.enable_x64(True):
        t = alternate({str(N): steps_call(e, k.flat_steps) for N, e in es.items()}, k.flat_repeats)
    step = {N: v["median_s"] / k.flat_steps for N, v in t.items()}
    lo, hi = str(min(k.flat_N)), str(max(k.flat_N))
    ratio = step[hi] / step[lo]
    return {"N": list(k.flat_N), "nodes": nodes, "same_nodes": len(set(nodes.values())) == 1,
            "steps_per_call": k.flat_steps, "step_s": step, "timing": t, "ratio": ratio,
            "ratio_of_minima": t[hi]["min_s"] / t[lo]["min_s"],
            "met": len(set(nodes.values())) == 1 and max(ratio, 1 / ratio) <= FLAT_GOAL}


# --- goal 3 ---

def against_tokens(k: Knobs) -> dict:
    a = k.accuracy
    before = accuracy.tokens_side.cache_info().currsize
    tok = accuracy.tokens_side(a)
    reused = accuracy.tokens_side.cache_info().currsize == before
    logged, ref, _ = accuracy.reference(a.steps, a.log_every)
    e = build_engine(config(**EXACT, train__steps=a.steps))
    err = accuracy.rel_error(trainer.train(e, logged, progress=False).trajectory.feature_loss, ref)
    with jax.enable_x64(True):
        t = accuracy.step_and_observe(e, a.repeats)
    run_s = accuracy.run_time(t, a.steps, len(logged))
    tc = tok["tokens_choice"]
    return {"steps": a.steps, "logged_rows": len(logged), "rel_error": err, "run_s": run_s, **t,
            "tokens_choice": tc, "tokens_side": "reused from population_vs_tokens" if reused else "computed here",
            "ratio": tc["run_s"] / run_s}


# --- goal 4 ---

def _counting(e, counts: dict):
    """``e`` with a host callback counting every evaluation of its gradient."""
    def bump():
        counts["grad"] += 1

    def grad(static, consts, y, step):
        jax.debug.callback(bump)
        return e.grad(static, consts, y, step)

    return e._replace(grad=grad)


def flow_vs_gd(k: Knobs) -> dict:
    base = {"train__expectation": k.flow_expectation, "data__num_features": k.flow_K,
            "data__prompt_length": k.flow_N, "train__lr": k.flow_lr, "train__steps": k.flow_steps}
    gc = config(**base)
    ge = build_engine(gc)
    schedule = trainer.log_schedule(k.flow_steps)
    trainer.train(ge, trainer.log_schedule(64), progress=False)  # compile (the same chunk serves any length)
    t0 = time.perf_counter()
    gd = trainer.train(ge, schedule, progress=False)
    gd_s = time.perf_counter() - t0
    probs = feature_probs(gc.data)
    gph = detect_phases(gd.trajectory, probs, gc.eps)

    fc = config(**base, train__method="flow")
    counts = {"grad": 0}  # the callback costs microseconds per evaluation: the timed run counts too
    with compile_clock() as cc:
        t0 = time.perf_counter()
        _, fph, stats = run_flow(_counting(build_engine(fc), counts), fc)
        flow_s = time.perf_counter() - t0

    rows, reached = [], True
    for gf, ff in zip(gph["features"], fph["features"]):
        if gf["feature"] > 1:  # the minor features are exchangeable: feature 1 stands for them
            continue
        for gp, fp in zip(gf["phases"], ff["phases"]):
            t, end = fp.get("time"), gp["end"]
            reached &= t is not None and end is not None
            rel = None if t is None or end is None else abs(end - t) / max(t, 1.0)  # one step at least
            rows.append({"feature": gf["feature"], "group": gf["group"], "phase": gp["name"], "gd_end": end,
                         "flow_time": t, "rel_diff": rel})
    minor = [r for r in rows if r["group"] == "minor"]
    gd_steps = minor[-1]["gd_end"] if minor else None  # GD steps to the minor features' eps
    rels = [r["rel_diff"] for r in rows if r["rel_diff"] is not None]
    max_rel_diff = max(rels) if rels else None
    ratio = gd_steps / counts["grad"] if gd_steps else 0.0
    return {"expectation": k.flow_expectation, "K": k.flow_K, "N": k.flow_N, "lr": k.flow_lr,
            "steps": k.flow_steps, "gd_steps_to_minor_eps": gd_steps, "gd_s": gd_s, "flow_s": flow_s,
            "flow_compile_s": cc["compile_s"], "flow_compilations": cc["compilations"], "solver": stats,
            "grad_evaluations": counts["grad"],
            "phases": rows, "all_reached": reached, "max_rel_diff": max_rel_diff, "ratio": ratio,
            "met_evaluations": reached and ratio >= FLOW_GOAL,
            "met_phases": reached and max_rel_diff is not None and max_rel_diff <= PHASE_GOAL}


# --- goal 5 ---

def large_k(k: Knobs) -> dict:
    cfg = config(**EXACT, data__num_features=k.big_K, train__steps=k.big_steps)
    out = {"K": k.big_K, "steps": k.big_steps, "load_start": load()}
    for name in ("cold", "warm"):  # cold: the first run in this process with this shape (compiles)
        with compile_clock() as cc:
            t0 = time.perf_counter()
            r = trainer.run_training(cfg, progress=False)
            out[name] = {"wall_s": time.perf_counter() - t0, **cc}
    out["status"] = r.status
    e = build_engine(cfg)
    out["nodes"], out["classes"] = e.static.nodes, len(e.static.groups.members)
    # without classes of equal probability (zipf: K distinct p) every row is its own: the general cost
    z = build_engine(config(**EXACT, data__num_features=k.big_K, data__probs="zipf"))
    with jax.enable_x64(True):
        t = alternate({"step": steps_call(z, k.general_steps), "observe": observe_call(z)}, k.general_repeats)
    rows = len(trainer.log_schedule(k.big_steps))
    step_s = t["step"]["median_s"] / k.general_steps
    out["general"] = {"probs": "zipf", "classes": len(z.static.groups.members), "nodes": z.static.nodes,
                      "step_s": step_s, "observe_s": t["observe"]["median_s"],
                      "run_s_estimate": k.big_steps * step_s + rows * t["observe"]["median_s"], "logged_rows": rows}
    out["load_end"] = load()
    return out


def run(k: Knobs) -> dict:
    out = {"load_start": load()}
    out["default_run"] = default_run(k)
    out["flat_in_n"] = flat_in_n(k)
    out["tokens"] = against_tokens(k)
    out["flow"] = flow_vs_gd(k)
    out["large_k"] = large_k(k)
    out["load_end"] = load()
    return out


# --- report ---

def comparisons(r: dict) -> list[dict]:
    d, tk, lk = r["default_run"], r["tokens"], r["large_k"]
    tm, tc = d["timing"], tk["tokens_choice"]
    return [
        comparison(f"exact vs monte_carlo (M={d['M']}): default run, K=16, N=256, {d['steps']} steps",
                   tm["exact"]["median_s"], tm["monte_carlo"]["median_s"], 1,
                   f"compile apart: {sec(tm['exact']['compile_s'])} vs {sec(tm['monte_carlo']['compile_s'])}"),
        comparison(f"exact vs tokens at <=1% error ({tk['steps']} steps)", tk["run_s"], tc["run_s"], TOKENS_GOAL,
                   f"exact error {tk['rel_error']:.1e}; tokens B={tc['B']:.0f}"
                   + (" (fit; time extrapolated)" if tc["extrapolated"] else "")),
        comparison(f"K={lk['K']} exact run, {lk['steps']} steps, imbalanced: 1-minute budget vs wall time",
                   lk["cold"]["wall_s"], BUDGET_S, 1, "compilation included"),
    ]


def goals(r: dict) -> list[dict]:
    """Goal rows that are not a ratio of two times (report.py adds them to the goals table)."""
    d, f, fl = r["default_run"], r["flow"], r["flat_in_n"]
    where = f"K={d['vs_enumerate']['K']}, N={d['vs_enumerate']['N']} vs enumerate" + \
            (", K=16, N=256 vs the symmetric reference" if "vs_symmetric" in d else "")
    lo, hi = fl["N"][0], fl["N"][-1]
    return [
        {"goal": f"exact vs enumeration-grade reference, max relative difference of feature_loss ({where}): "
                 f"<= {ERROR_GOAL:.0e}", "measured": f"{d['max_rel_diff']:.1e}",
         "met": d["max_rel_diff"] <= ERROR_GOAL},
        {"goal": f"exact step time flat in N (N={_n(hi)} vs N={lo}): within {FLAT_GOAL}x",
         "measured": times(fl["ratio"]) + ("" if fl["same_nodes"] else " (node counts differ)"), "met": fl["met"]},
        {"goal": f"flow vs GD at lr={f['lr']} to the minor eps ({f['expectation']}): "
                 f">= {FLOW_GOAL}x fewer gradient evaluations", "measured": times(f["ratio"]),
         "met": f["met_evaluations"]},
        {"goal": f"flow event times vs GD phase ends x lr: within {PHASE_GOAL:.0%}",
         "measured": "not all reached" if f["max_rel_diff"] is None else f"{f['max_rel_diff']:.1e}",
         "met": f["met_phases"]},
    ]


def _n(n: int) -> str:
    """10^6 for a power of ten, else the number."""
    e = round(np.log10(n)) if n > 0 else 0
    return f"10^{e}" if e > 2 and 10**e == n else str(n)


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def tables(r: dict) -> dict[str, str]:
    d, fl, tk, f, lk = r["default_run"], r["flat_in_n"], r["tokens"], r["flow"], r["large_k"]
    tm, tc = d["timing"], tk["tokens_choice"]
    en = d["vs_enumerate"]
    lo, hi = (str(n) for n in (fl["N"][0], fl["N"][-1]))
    g = lk["general"]
    rows = [
        ["1", f"default run, K=16, N=256, {d['steps']} steps ({d['logged_rows']} rows), compiled",
         f"{sec(tm['exact']['median_s'])} ({d['nodes']} nodes)",
         f"monte_carlo M={d['M']}: {sec(tm['monte_carlo']['median_s'])}",
         times(d["ratio"]), ">= 1x", _yes(d["ratio"] >= 1)],
        ["1", "  its compilation (trace + lower + XLA), apart", sec(tm["exact"]["compile_s"]),
         sec(tm["monte_carlo"]["compile_s"]), "", "", ""],
        ["1", f"  error: K={en['K']}, N={en['N']} vs enumerate ({en['count_vectors']} count vectors)",
         f"{en['max_rel_diff']:.1e}", "", "", f"<= {ERROR_GOAL:.0e}", _yes(en["max_rel_diff"] <= ERROR_GOAL)],
    ]
    if "vs_symmetric" in d:
        rows.append(["1", "  error: K=16, N=256 vs the symmetric reference (all count vectors)",
                     f"{d['vs_symmetric']['max_rel_diff']:.1e}",
                     f"monte_carlo: {d['monte_carlo_rel_dev_from_exact']:.1e}",
                     "", f"<= {ERROR_GOAL:.0e}", _yes(d["vs_symmetric"]["max_rel_diff"] <= ERROR_GOAL)])
    rows += [
        ["2", f"time per step, N={_n(int(hi))} vs N={lo} (nodes {fl['nodes'][hi]}, {fl['nodes'][lo]})",
         f"{ms(fl['step_s'][hi])} ms", f"{ms(fl['step_s'][lo])} ms",
         f"{times(fl['ratio'])} (fastest calls: {times(fl['ratio_of_minima'])})", f"within {FLAT_GOAL}x",
         _yes(fl["met"])],
        ["3", f"run at <=1% error, {tk['steps']} steps ({tk['logged_rows']} rows)",
         f"{sec(tk['run_s'])} (error {tk['rel_error']:.1e})",
         f"tokens B={tc['B']:.0f}: {sec(tc['run_s'])}" + (" (**extrapolated**)" if tc["extrapolated"] else ""),
         times(tk["ratio"]), f">= {TOKENS_GOAL}x", _yes(tk["ratio"] >= TOKENS_GOAL)],
        ["4", f"gradient evaluations to the minor eps, lr={f['lr']} ({f['expectation']}, K={f['K']}, N={f['N']})",
         f"flow: {f['grad_evaluations']}", f"GD: {f['gd_steps_to_minor_eps']} steps", times(f["ratio"]),
         f">= {FLOW_GOAL}x", _yes(f["met_evaluations"])],
        ["4", f"  the flow's trajectory solve alone ({f['solver']['solver']}, rtol {f['solver']['rtol']:.0e})",
         f"{f['solver']['function_evaluations']} ({f['solver']['solver_steps']} steps)", "", "", "", ""],
        ["4", "  phase times: flow events vs GD phase ends (max relative difference)",
         "not all reached" if f["max_rel_diff"] is None else f"{f['max_rel_diff']:.1e}", "", "",
         f"within {PHASE_GOAL:.0%}", _yes(f["met_phases"])],
        ["4", f"  wall time ({f['steps']} steps / t = {f['lr'] * f['steps']:.0f})",
         f"flow {sec(f['flow_s'])}, of which compiling {sec(f['flow_compile_s'])} "
         f"({f['flow_compilations']} compilations)",
         f"GD {sec(f['gd_s'])} (compiled)", "", "", ""],
        ["5", f"K={lk['K']}, {lk['steps']} steps, imbalanced ({lk['classes']} classes of equal p), one run",
         f"{sec(lk['cold']['wall_s'])} (compiling {sec(lk['cold']['compile_s'])})",
         f"compiled: {sec(lk['warm']['wall_s'])}", "", f"< {BUDGET_S:.0f} s", _yes(lk["cold"]["wall_s"] < BUDGET_S)],
        ["5", f"  K={lk['K']}, zipf ({g['classes']} classes): step {ms(g['step_s'])} ms, observation "
              f"{ms(g['observe_s'])} ms", f"{sec(g['run_s_estimate'])} (estimate)", "", "", "(no goal)", ""],
    ]
    out = {"exact": table(["#", "measurement", "exact", "other", "ratio", "goal", "met"], rows)}
    ph = [[("dominant" if p["group"] == "dominant" else "minor"), p["phase"],
           "-" if p["gd_end"] is None else p["gd_end"],
           "-" if p["flow_time"] is None else f"{p['flow_time']:.1f}",
           "-" if p["rel_diff"] is None else f"{p['rel_diff']:.1e}"] for p in f["phases"]]
    out["exact_phases"] = table(["feature", "phase", "GD end (step)", "flow event (t / lr)", "relative difference"], ph)
    return out
