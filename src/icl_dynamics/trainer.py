"""The trainer: GD from Q = 0 inside jitted ``lax.scan`` / ``while_loop``, logging without host round-trips.

The schedule of logged steps is split into fixed-size chunks of rows. One jitted call advances through a
chunk: for each row it runs the GD steps up to that row's step in a ``while_loop``, then observes. The host
only sees chunk boundaries (progress bar, checkpoints), and since shapes are fixed, changing values (lr, p,
N, seed) never recompiles.

Every update is checked for finiteness on the step it happens; a non-finite update stops the run and keeps
the last finite parameters (status ``diverged``).

Checkpoints and signals live on the host, at chunk boundaries only: after the first boundary past each
multiple of ``checkpoint_every`` steps, and when SIGINT/SIGTERM arrived during the chunk, ``train`` hands a
:class:`TrainState` to ``on_checkpoint``. Restarting from that state at the same boundary, with the same
compiled chunk function, repeats the arithmetic of an uninterrupted run exactly.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .config import RunConfig
from .engines import Engine, build_engine
from .errors import ConfigError, Interrupted
from .progress import progress_bar
from .schedule import CHUNK_ROWS, StopAtEps, log_schedule, padded_chunk, stop_rule
from .trajectory import Metrics, Trajectory, stack_rows

FAULT_ENV = "ICL_DYNAMICS_FAULT"


def fault_step_from_env() -> int | None:
    """``ICL_DYNAMICS_FAULT=nan@STEP`` poisons the update that produces step STEP (a testing aid)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    m = re.fullmatch(r"nan@(\d{1,12})", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"{FAULT_ENV}='{spec[:40]}' is malformed; expected nan@STEP with 1 <= STEP < 10^12")
    return int(m.group(1))


class TrainResult(NamedTuple):
    trajectory: Trajectory
    params: Any
    status: str  # "completed" | "diverged"
    diverged_at: int | None  # the step whose update was non-finite
    watched: Trajectory | None = None  # the watch engine's metrics at the same rows (the eval: block)


class Watch(NamedTuple):
    """Metrics of another engine logged beside the run's own, on the run's parameters at every logged row:
    ``observe(static, consts, params)`` of an engine with the same parameter shapes (the ``eval:`` block's
    distribution). ``observe`` and ``static`` are compile-time constants, ``consts`` traced values."""

    observe: Callable
    static: Any
    consts: Any

    @classmethod
    def of(cls, engine: Engine) -> Watch:
        return cls(engine.observe, engine.static, engine.consts)


class TrainState(NamedTuple):
    """Training at a chunk boundary: ``index`` schedule rows done (a multiple of CHUNK_ROWS), ``step`` GD
    steps done (= schedule[index - 1]), ``params`` and ``opt_state`` (numpy pytrees) and the ``rows``
    logged so far (a Trajectory of ``index`` rows)."""

    index: int
    step: int
    params: Any
    rows: Trajectory
    opt_state: Any = None  # None: the optimizer's initial state (right for stateless GD)
    watched: Trajectory | None = None  # the Watch's rows so far, when the run has one


def _all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def scan_rows(grad, observe, optimizer, static, consts, lr, state, step, targets, fault_step=None, watch=None,
              watch_consts=None):
    """Step the optimizer up to each of ``targets`` (R,) in turn and observe there.

    ``state`` is (params, optimizer state). Returns (state, step, ok) after the last target and per-row
    (step (R,), Metrics with leading R, and the watch's Metrics or None). ``watch`` is (observe, static) of
    a :class:`Watch`, ``watch_consts`` its consts. ``ok`` turns False on the first non-finite update; the state
    then stays at the last finite one.
    """
    tx = optimizer.transform(lr)

    def one_step(carry):
        (p, o), s, _ = carry
        updates, o_new = tx.update(grad(static, consts, p, s), o, p)
        p_new = optax.apply_updates(p, updates)
        if fault_step is not None:  # static: no cost unless the fault aid is set
            p_new = jax.tree.map(lambda x: jnp.where(s + 1 == fault_step, jnp.nan * x, x), p_new)
        new = (p_new, o_new)
        finite = _all_finite(new)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, (p, o))
        return new, jnp.where(finite, s + 1, s), finite

    def row(carry, target):
        carry = jax.lax.while_loop(lambda c: c[2] & (c[1] < target), one_step, carry)
        params = carry[0][0]
        watched = None if watch is None else watch[0](watch[1], watch_consts, params)
        return carry, (carry[1], observe(static, consts, params), watched)

    init = (state, jnp.asarray(step, jnp.int64), jnp.asarray(True))
    return jax.lax.scan(row, init, targets)


# The functions, the optimizer and ``static`` are hashable compile-time constants; consts, lr, the state and
# targets are traced values, so new lr / probabilities / seeds reuse the compiled code.
_STATIC = ("grad", "observe", "optimizer", "static", "fault_step", "watch")
advance = jax.jit(scan_rows, static_argnames=_STATIC)


@contextmanager
def compilations() -> Iterator[list[str]]:
    """Count XLA compilations in a block (through jax.monitoring): the yielded list gains one entry per
    backend compile. Benchmarks and tests use it to show that new values reuse compiled code."""
    seen: list[str] = []

    def listener(name: str, duration: float, **kwargs) -> None:
        if name == "/jax/core/compile/backend_compile_duration":
            seen.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@contextmanager
def _deferred_signals(enabled: bool) -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM only append their number to the yielded list (the loop acts on it at
    the next chunk boundary) and restore the previous handler, so a second signal acts at once. Only in
    the main thread (Python's rule for handlers); elsewhere signals keep their usual effect."""
    got: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield got
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in sigs}

    def handler(signum, frame):
        got.append(signum)
        signal.signal(signum, previous[signum])

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield got
    finally:
        for s in sigs:
            signal.signal(s, previous[s])


def train(engine: Engine, schedule: np.ndarray, *, progress: bool = True, fault_step: int | None = None,
          description: str = "train", start: TrainState | None = None, checkpoint_every: int | None = None,
          on_checkpoint: Callable[[TrainState, str], None] | None = None,
          min_checkpoint_seconds: float = 0.0, stop: StopAtEps | None = None,
          watch: Watch | None = None) -> TrainResult:
    """Run ``engine`` through every step in ``schedule`` (which starts at 0).

    With ``watch``, its metrics are logged at every row too (``TrainResult.watched``, kept in checkpoints).

    ``start`` continues from a saved :class:`TrainState`. With ``on_checkpoint``, the state is handed to
    it (reason ``"periodic"``) at the first chunk boundary past each multiple of ``checkpoint_every``
    steps (but not sooner than ``min_checkpoint_seconds`` after the last one), and SIGINT/SIGTERM finish
    the current chunk, hand it over (reason ``"SIGINT"``/``"SIGTERM"``) and raise :class:`Interrupted`.
    Between boundaries nothing leaves the device. Where checkpoints fall never changes the numbers.
    """
    with jax.enable_x64(True):
        return _train(engine, schedule, progress, fault_step, description, start, checkpoint_every,
                      on_checkpoint, min_checkpoint_seconds, stop, watch)


def _stacked(rows: list, which: int) -> Trajectory | None:
    """The logged chunks' ``which`` metrics (1: the run's, 2: the watch's) as one Trajectory."""
    return None if rows[0][which] is None else stack_rows([r[0] for r in rows], [r[which] for r in rows])


def _train(engine, schedule, progress, fault_step, description, start, checkpoint_every, on_checkpoint,
           min_checkpoint_seconds, stop, watch) -> TrainResult:
    total = int(schedule[-1])
    state, step, ok, first, rows = initial_state(engine), 0, True, 0, []
    if start is not None:
        opt = state[1] if start.opt_state is None else start.opt_state
        state = jax.tree.map(jnp.asarray, (start.params, opt))
        step, first = int(start.step), int(start.index)
        rows.append((start.rows.steps, Metrics(*(start.rows[1:])),
                     None if watch is None else Metrics(*(start.watched[1:]))))
    last_saved, last_time = step, time.monotonic()
    crossed = None if stop is None or start is None else stop.crossing(start.rows.steps, start.rows.feature_loss)

    def saved(i: int) -> TrainState:
        params, opt_state = jax.device_get(state)
        return TrainState(i, step, params, _stacked(rows, 1), opt_state, _stacked(rows, 2))

    with progress_bar(progress) as bar, _deferred_signals(on_checkpoint is not None) as signals:
        task = bar.add_task(description, total=total, completed=step)
        for i in range(first, len(schedule), CHUNK_ROWS):
            (state, step_arr, ok_arr), (row_steps, metrics, watched) = advance(
                engine.grad, engine.observe, engine.optimizer, engine.static, engine.consts, engine.lr, state, step,
                padded_chunk(schedule, i), fault_step=fault_step, watch=None if watch is None else watch[:2],
                watch_consts=None if watch is None else watch.consts)
            step, ok = int(step_arr), bool(ok_arr)
            rows.append((np.asarray(row_steps), *jax.device_get((metrics, watched))))
            bar.update(task, completed=step)
            done = i + CHUNK_ROWS
            if not ok or done >= len(schedule):
                break
            if stop is not None:  # StopAtEps.rows, one chunk at a time
                steps_c, fl_c = rows[-1][0], np.asarray(rows[-1][1].feature_loss)
                crossed = crossed if crossed is not None else stop.crossing(steps_c, fl_c)
                if crossed is not None and np.any(steps_c >= stop.factor * crossed):
                    break
            if signals:
                if on_checkpoint is not None:
                    on_checkpoint(saved(done), signal.Signals(signals[0]).name)
                raise Interrupted(signals[0], step, on_checkpoint is not None)
            every = checkpoint_every or 0
            if on_checkpoint is not None and every and step // every > last_saved // every \
                    and time.monotonic() - last_time >= min_checkpoint_seconds:
                on_checkpoint(saved(done), "periodic")
                last_saved, last_time = step, time.monotonic()
    return TrainResult(_stacked(rows, 1), state[0], "completed" if ok else "diverged", None if ok else step + 1,
                       _stacked(rows, 2))


def initial_state(engine: Engine):
    """(params, optimizer state) at step 0."""
    return engine.init, engine.optimizer.transform(engine.lr).init(engine.init)


def _batched(grad, observe, optimizer, static, consts, lr, state, step, targets, fault_step=None, watch=None,
             watch_consts=None):
    """:func:`scan_rows` vmapped over the leading axis of consts, lr, state, step and watch_consts (targets
    shared)."""

    def one(c, r, st, s, wc):
        return scan_rows(grad, observe, optimizer, static, c, r, st, s, targets, fault_step, watch, wc)

    return jax.vmap(one)(consts, lr, state, step, watch_consts)


# Like advance: a sweep worker compiles once per batch structure and reuses the code for later batches.
batched_advance = jax.jit(_batched, static_argnames=_STATIC)


def structure(engine: Engine, schedule: np.ndarray, watch: Watch | None = None) -> tuple:
    """Engines with equal structure (code, static options, array shapes, schedule, and their watches') can be
    trained together by :func:`train_batched`."""
    trees = (engine.consts, engine.init, None if watch is None else watch.consts)
    leaves, treedef = jax.tree.flatten(trees)
    return (engine.name, engine.static, engine.grad, engine.observe, engine.optimizer, treedef,
            tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves), schedule.tobytes(),
            None if watch is None else watch[:2])


def train_batched(engines: list[Engine], schedule: np.ndarray, fault_step: int | None = None,
                  stop: StopAtEps | None = None, watches: list[Watch] | None = None) -> list[TrainResult]:
    """Train engines of one :func:`structure` as one vmapped computation: the one vmapped path, used by
    sweeps, reproduce and the benchmarks. Chunks of CHUNK_ROWS rows, as :func:`train`. Results in input
    order; ``params`` are the final parameters (None for a member that ``stop`` ended before the batch:
    its trajectory is cut where :func:`train` would have stopped it, its parameters went on). ``watches``:
    one :class:`Watch` per engine, of one structure too (``TrainResult.watched``)."""
    e0 = engines[0]
    with jax.enable_x64(True):
        stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)  # noqa: E731
        consts, lr = stack([e.consts for e in engines]), stack([e.lr for e in engines])
        state = stack([initial_state(e) for e in engines])
        watch_consts = None if watches is None else stack([w.consts for w in watches])
        step = np.zeros(len(engines), np.int64)
        steps, metrics, watched = [], [], []
        for i in range(0, len(schedule), CHUNK_ROWS):
            (state, step, ok), (row_steps, rows, w_rows) = batched_advance(
                e0.grad, e0.observe, e0.optimizer, e0.static, consts, lr, state, step, padded_chunk(schedule, i),
                fault_step=fault_step, watch=None if watches is None else watches[0][:2], watch_consts=watch_consts)
            steps.append(np.asarray(row_steps))
            metrics.append(jax.device_get(rows))
            watched.append(jax.device_get(w_rows))
            if not np.any(np.asarray(ok)) or (stop is not None and all(
                    k is not None for k in _stops(stop, steps, metrics, len(engines)))):
                break
        params, step, ok = jax.device_get((state[0], step, ok))
    keep = _stops(stop, steps, metrics, len(engines)) if stop is not None else [None] * len(engines)
    out = []

    def member(chunks, i, cut):
        return stack_rows([s[i] for s in steps[cut]], [Metrics(*(np.asarray(x[i]) for x in m)) for m in chunks[cut]])

    for i in range(len(engines)):
        cut = slice(None) if keep[i] is None else slice(0, keep[i] // CHUNK_ROWS)
        fine = bool(ok[i]) or keep[i] is not None and keep[i] < CHUNK_ROWS * len(steps)
        p = None if keep[i] is not None and keep[i] < CHUNK_ROWS * len(steps) else jax.tree.map(lambda x: x[i], params)
        out.append(TrainResult(member(metrics, i, cut), p, "completed" if fine else "diverged",
                               None if fine else int(step[i]) + 1, None if watches is None else member(watched, i, cut)))
    return out


def _stops(stop: StopAtEps, steps: list, metrics: list, n: int) -> list[int | None]:
    """Per member: the rows :func:`train` would keep under ``stop`` (None: it would go on)."""
    all_steps = np.concatenate(steps, axis=1)
    fl = np.concatenate([np.asarray(m.feature_loss) for m in metrics], axis=1)
    return [stop.rows(all_steps[i], fl[i]) for i in range(n)]


def run_training(cfg: RunConfig, *, progress: bool = True, start: TrainState | None = None,
                 checkpoint_every: int | None = None,
                 on_checkpoint: Callable[[TrainState, str], None] | None = None,
                 min_checkpoint_seconds: float = 0.0) -> TrainResult:
    """Build the engine for ``cfg`` and train it on its log schedule (optionally from ``start``)."""
    engine = build_engine(cfg)
    schedule = log_schedule(cfg.train.steps, cfg.train.log_every)
    return train(engine, schedule, progress=progress, fault_step=fault_step_from_env(), start=start,
                 checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint,
                 min_checkpoint_seconds=min_checkpoint_seconds, stop=stop_rule(cfg))
