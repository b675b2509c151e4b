"""Checkpoints of a run in progress: ``RUN_DIR/checkpoint.npz``, one atomically replaced file.

Arrays (all float64 unless noted), no pickle:

    param_0 .. param_{L-1}   the parameter pytree's leaves (the trainer's params at a chunk boundary)
    opt_0 .. opt_{M-1}       the optimizer state's leaves (none for plain GD)
    rows_steps (R,) int64    logged steps so far (= schedule[:R])
    rows_loss (R,), rows_feature_loss (R, K), rows_scores (R, K, K), rows_attention (R, K, K)
    watched_*                the same for the ``eval:`` block's metrics (only in runs that have one)
    rng_key uint32           the engine's random key, where its EngineSpec.rng_key says it lives; empty if none
    meta ()  str             JSON: format, version, config_hash, engine, step, index (= R, schedule rows
                             done), schedule_len, reason (periodic | SIGINT | SIGTERM)

Everything needed to continue is either here or a function of config.yaml, and :func:`load` checks that the
two agree, so a stale, damaged or other-version checkpoint is refused with one line, never half-used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .config import RunConfig
from .engines import Engine, rng_key_of
from .errors import RunDirError
from .fsio import os_error
from .fsio_npz import load_npz_checked
from .storage import read_budget, save_npz
from .trainer import CHUNK_ROWS, TrainState, initial_state
from .trajectory import Trajectory, expected_shapes

CHECKPOINT = "checkpoint.npz"
FORMAT = 1
_ROWS = tuple(f"rows_{f}" for f in Trajectory._fields)
_WATCHED = tuple(f"watched_{f}" for f in Trajectory._fields)


DEFAULT_MIN_SECONDS = 30.0


def interval(cfg: RunConfig) -> tuple[int, float]:
    """(steps between checkpoints, least seconds between them). ``train.checkpoint_every`` is honoured
    exactly; the default is every 5% of the run but at most once per 30 s, so a long run loses at most
    5% (or 30 s) and a run of seconds, with little to lose, pays nothing (a save of a K=16 run costs ~25 ms)."""
    if cfg.train.checkpoint_every is not None:
        return cfg.train.checkpoint_every, 0.0
    return max(1, math.ceil(cfg.train.steps / 20)), DEFAULT_MIN_SECONDS


def save(run_dir: Path, cfg: RunConfig, engine: Engine, state: TrainState, reason: str) -> None:
    """Write ``state`` to ``run_dir/checkpoint.npz`` atomically (temp file, fsync, rename)."""
    from . import __version__

    leaves = jax.tree.leaves(state.params)
    arrays: dict[str, np.ndarray] = {f"param_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays.update({f"opt_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state.opt_state))})
    arrays.update({name: np.asarray(x) for name, x in zip(_ROWS, state.rows)})
    if state.watched is not None:
        arrays.update({name: np.asarray(x) for name, x in zip(_WATCHED, state.watched)})
    arrays["rng_key"] = rng_key_of(engine)
    meta = {"format": FORMAT, "version": __version__, "config_hash": cfg.hash(), "engine": engine.name,
            "step": int(state.step), "index": int(state.index), "num_params": len(leaves), "reason": reason}
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz(Path(run_dir) / CHECKPOINT, arrays)


def remove(run_dir: Path) -> None:
    """Delete the checkpoint (a regular file, or a link in its place: the link, never its target); anything
    else at that name is not ours to delete and stays."""
    p = Path(run_dir) / CHECKPOINT
    try:
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
    except OSError as e:
        raise os_error(e, p, "remove") from None


def require(run_dir: Path) -> Path:
    """The checkpoint's path; a one-line :class:`RunDirError` if there is none."""
    p = Path(run_dir) / CHECKPOINT
    if not p.is_file():
        raise RunDirError(f"run directory '{run_dir}' has no checkpoint to resume from; start the run again "
                          f"with 'icl-dynamics train --out {run_dir} --overwrite'")
    return p


def load(run_dir: Path, cfg: RunConfig, engine: Engine, schedule: np.ndarray) -> tuple[TrainState, dict[str, Any]]:
    """The saved state and its metadata; :class:`RunDirError` (one line) if missing, damaged, stale or from
    another version."""
    p = require(run_dir)
    bad = f"checkpoint {p} is damaged or from another version"
    K = cfg.data.num_features
    with jax.enable_x64(True):
        init_params, init_opt = initial_state(engine)
    init_leaves, treedef = jax.tree.flatten(init_params)
    opt_leaves, opt_treedef = jax.tree.flatten(init_opt)
    # declared shapes and sizes are checked before any data is read (fsio_npz): a damaged header cannot
    # make this allocate more than the memory ceiling
    groups = ("rows", "watched") if cfg.eval else ("rows",)
    expect = {f"{g}_{k}": ((None, *shape[1:]), "iuf") for g in groups for k, shape in expected_shapes(1, K).items()}
    expect.update({f"param_{i}": (tuple(np.shape(x)), "f") for i, x in enumerate(init_leaves)})
    expect.update({f"opt_{i}": (tuple(np.shape(x)), "iuf") for i, x in enumerate(opt_leaves)})
    expect.update({"rng_key": ((None,), "u"), "meta": ((), "U")})
    arrays = load_npz_checked(p, expect, max_bytes=read_budget(cfg))
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (ValueError, RecursionError):
        raise RunDirError(f"{bad} (not a readable checkpoint)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunDirError(f"{bad} (format {meta.get('format') if isinstance(meta, dict) else '?'}, "
                          f"this version reads {FORMAT})")
    if meta.get("config_hash") != cfg.hash():
        raise RunDirError(f"checkpoint {p} does not match {Path(run_dir) / 'config.yaml'} (was the config "
                          f"edited?); refusing to resume")
    index, step = meta.get("index"), meta.get("step")
    if not (isinstance(index, int) and isinstance(step, int) and 0 < index < len(schedule)
            and index % CHUNK_ROWS == 0 and step == int(schedule[index - 1])):
        raise RunDirError(f"{bad} (index {index!r} / step {step!r} do not fit the run's log schedule)")

    want = {f"{g}_{k}": (shape, np.int64 if k == "steps" else np.float64)
            for g in groups for k, shape in expected_shapes(index, K).items()}
    want.update({f"param_{i}": (x.shape, x.dtype) for i, x in enumerate(init_leaves)})
    want.update({f"opt_{i}": (np.shape(x), np.asarray(x).dtype) for i, x in enumerate(opt_leaves)})
    want["rng_key"] = (rng_key_of(engine).shape, rng_key_of(engine).dtype)
    for name, (shape, dtype) in want.items():
        a = arrays.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            got = "missing" if a is None else f"{a.dtype}{list(a.shape)}"
            raise RunDirError(f"{bad} (array '{name}' is {got}, expected {np.dtype(dtype)}{list(shape)})")
    if not all(np.array_equal(arrays[f"{g}_steps"], schedule[:index]) for g in groups):
        raise RunDirError(f"{bad} (logged steps do not match the run's log schedule)")
    if not np.array_equal(arrays["rng_key"], rng_key_of(engine)):
        raise RunDirError(f"{bad} (its RNG key differs from the one this version derives from the seed)")
    params = [arrays[f"param_{i}"] for i in range(len(init_leaves))]
    opt = [arrays[f"opt_{i}"] for i in range(len(opt_leaves))]
    if not all(np.all(np.isfinite(x)) for x in params + [o for o in opt if o.dtype.kind == "f"]):
        raise RunDirError(f"{bad} (non-finite parameters)")
    rows = Trajectory(*(arrays[name] for name in _ROWS))
    watched = Trajectory(*(arrays[name] for name in _WATCHED)) if cfg.eval else None
    return TrainState(index, step, jax.tree.unflatten(treedef, params), rows,
                      jax.tree.unflatten(opt_treedef, opt), watched), meta
