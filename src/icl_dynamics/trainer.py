"""The trainer: GD from Q = 0 inside jitted ``lax.scan`` / ``while_loop``, logging without host round-trips.

The schedule of logged steps is split into fixed-size chunks of rows. One jitted call advances through a
chunk: for each row it runs the GD steps up to that row's step in a ``while_loop``, then observes. The host
only sees chunk boundaries (progress bar, checkpoints), and since shapes are fixed, changing values (lr, p,
N, seed) never recompiles.

Every update is checked for finiteness on the step it happens; a non-finite update stops the run and keeps
the last finite parameters (status ``diverged``).
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config import RunConfig
from .errors import ConfigError
from .objectives import Engine, Metrics, build_engine
from .progress import progress_bar

CHUNK_ROWS = 16
FAULT_ENV = "ICL_DYNAMICS_FAULT"


def log_schedule(steps: int, log_every: int | None = None, points: int = 256) -> np.ndarray:
    """Sorted unique logged steps, always including 0 and ``steps``.

    Default: ``points`` log-spaced steps (resolving fast early transitions) united with ``points`` linear
    ones (resolving late ones), so the file stays small for any run length.
    """
    if log_every is not None:
        s = np.arange(0, steps + 1, log_every)
    else:
        s = np.concatenate([np.geomspace(1, steps, points), np.linspace(0, steps, points)])
    return np.unique(np.concatenate([[0, steps], np.rint(s)]).astype(np.int64))


def fault_step_from_env() -> int | None:
    """``ICL_DYNAMICS_FAULT=nan@STEP`` poisons the update that produces step STEP (a testing aid)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    m = re.fullmatch(r"nan@(\d+)", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"{FAULT_ENV}='{spec}' is malformed; expected nan@STEP with STEP >= 1")
    return int(m.group(1))


class Trajectory(NamedTuple):
    """Logged rows, numpy float64: steps (T,), loss (T,), feature_loss (T,K), scores (T,K,K),
    attention (T,K,K)."""

    steps: np.ndarray
    loss: np.ndarray
    feature_loss: np.ndarray
    scores: np.ndarray
    attention: np.ndarray


class TrainResult(NamedTuple):
    trajectory: Trajectory
    params: Any
    status: str  # "completed" | "diverged"
    diverged_at: int | None  # the step whose update was non-finite


def _all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def scan_rows(update, observe, static, consts, params, step, targets, fault_step=None):
    """Run GD up to each of ``targets`` (R,) in turn and observe there.

    Returns (params, step, ok) after the last target and per-row (step (R,), Metrics with leading R).
    ``ok`` turns False on the first non-finite update; the parameters then stay at the last finite ones.
    """

    def gd_step(carry):
        p, s, _ = carry
        new = update(static, consts, p, s)
        if fault_step is not None:  # static: no cost unless the fault aid is set
            new = jax.tree.map(lambda x: jnp.where(s + 1 == fault_step, jnp.nan * x, x), new)
        finite = _all_finite(new)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, p)
        return new, jnp.where(finite, s + 1, s), finite

    def row(carry, target):
        carry = jax.lax.while_loop(lambda c: c[2] & (c[1] < target), gd_step, carry)
        return carry, (carry[1], observe(static, consts, carry[0]))

    init = (params, jnp.asarray(step, jnp.int64), jnp.asarray(True))
    return jax.lax.scan(row, init, targets)


# The functions and ``static`` are hashable compile-time constants; consts, params and targets are traced
# values, so new lr / probabilities / seeds reuse the compiled code. Sweeps vmap ``scan_rows`` directly.
advance = jax.jit(scan_rows, static_argnames=("update", "observe", "static", "fault_step"))


def _stack(rows: list[tuple[np.ndarray, Metrics]]) -> Trajectory:
    steps = np.concatenate([r[0] for r in rows])
    m = [np.concatenate([np.asarray(getattr(r[1], f)) for r in rows]) for f in Metrics._fields]
    keep = np.concatenate([[True], np.diff(steps) > 0])  # drop padding and post-divergence repeats
    return Trajectory(steps[keep], *(x[keep] for x in m))


def train(engine: Engine, schedule: np.ndarray, *, progress: bool = True, fault_step: int | None = None,
          description: str = "train") -> TrainResult:
    """Run ``engine`` through every step in ``schedule`` (which starts at 0)."""
    total = int(schedule[-1])
    params, step, ok = engine.init, 0, True
    rows = []
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=total)
        for i in range(0, len(schedule), CHUNK_ROWS):
            chunk = schedule[i: i + CHUNK_ROWS]
            chunk = np.pad(chunk, (0, CHUNK_ROWS - len(chunk)), mode="edge")
            (params, step_arr, ok_arr), (row_steps, metrics) = advance(
                engine.update, engine.observe, engine.static, engine.consts, params, step,
                jnp.asarray(chunk), fault_step=fault_step)
            step, ok = int(step_arr), bool(ok_arr)
            rows.append((np.asarray(row_steps), jax.device_get(metrics)))
            bar.update(task, completed=step)
            if not ok:
                break
    traj = _stack(rows)
    return TrainResult(traj, params, "completed" if ok else "diverged", None if ok else step + 1)


def run_training(cfg: RunConfig, *, progress: bool = True) -> TrainResult:
    """Build the engine for ``cfg`` and train it on its log schedule."""
    engine = build_engine(cfg)
    schedule = log_schedule(cfg.train.steps, cfg.train.log_every)
    return train(engine, schedule, progress=progress, fault_step=fault_step_from_env())
