"""Run directories: atomic writes, manifests, and loading with clear errors.

Layout of a run directory::

    config.yaml        fully resolved config
    manifest.json      versions, git commit, device, seed, config hash, times
    trajectory.npz     steps, loss, feature_loss, scores, attention, probs (float64)
    metrics.parquet    tidy (step, feature, ...) table
    summary.json       status, final losses, first step with feature_loss <= eps per feature
    checkpoint.npz     only while a run is unfinished: see checkpoint.py
    params.npz         the final parameters (the engine's pytree leaves, param_0 ..)
    .icl-dynamics      the marker that says icl-dynamics made the folder (--overwrite needs it)
    .lock              held (flock) by the one process writing the folder

The final files are written in an order where every intermediate state is resumable or complete: the
outputs first, summary.json ("completed" or "diverged") next, and the checkpoint is removed last. Until the
summary says finished, the checkpoint is there and ``train --resume`` continues; after, the run is done.
"""

from __future__ import annotations

import datetime
import errno
import functools
import io
import json
import os
import platform
import re
import stat
import subprocess
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .config import RunConfig, memory_ceiling, validate
from .data import feature_probs, setting_name
from .errors import ConfigError, RunDirError
from .fsio import atomic_write_bytes, check_path, clip, os_error
from .fsio_npz import load_npz_checked
from .fsio_owned import prepare_owned_dir
from .measures import has_features, metrics_table, summarize
from .phases import detect_phases
from .trainer import TrainResult
from .trajectory import Trajectory, expected_shapes, from_arrays, to_arrays
from .yamlio import read_text

ARTIFACTS = ("config.yaml", "manifest.json", "trajectory.npz", "metrics.parquet", "summary.json", "phases.json",
             "checkpoint.npz", "params.npz", "explore.html", "eval_trajectory.npz")
TRAJECTORY_KEYS = ("steps", "loss", "feature_loss", "scores", "attention", "probs")
MAX_JSON_BYTES = 10_000_000  # summary.json and phases.json are a few kB


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz, as ``np.savez`` writes it but with fixed member timestamps, so equal arrays
    give byte-identical files (np.savez stamps the current time). Pickled objects are refused."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w",
                         force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def save_parquet(path: str | Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def prepare_output_dir(path: str | Path, overwrite: bool, owned: list[str], kind: str = "run") -> Path:
    """Create (or, with ``overwrite``, reuse) an output folder of ``kind`` that icl-dynamics made: a folder
    without our marker is never emptied, and ``overwrite`` removes only the ``owned`` files (fsio_owned)."""
    return prepare_owned_dir(path, kind, overwrite, list(owned))


def run_status(run_dir: Path) -> str | None:
    """The status in summary.json (running, interrupted, failed, diverged, completed); None without one."""
    try:
        return read_json(run_dir / "summary.json").get("status")
    except RunDirError:
        return None


def is_finished(run_dir: Path) -> bool:
    return run_status(run_dir) in ("completed", "diverged")


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """A run directory: :func:`prepare_output_dir` owning the run's :data:`ARTIFACTS`. An unfinished run
    with a checkpoint is pointed to ``--resume`` (the same judgement as ``train --resume``)."""
    p = Path(path)
    if not overwrite and (p / "checkpoint.npz").is_file() and not is_finished(p):
        raise RunDirError(f"--out '{clip(p)}' holds an unfinished run with a checkpoint; continue it with "
                          f"'icl-dynamics train --resume {clip(p)}' (or pass --overwrite to discard it)")
    return prepare_output_dir(path, overwrite, list(ARTIFACTS), "run")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files that a killed process left behind mid-write (``.NAME.*.tmp``)."""
    names = "|".join(re.escape(n) for n in ARTIFACTS)
    pattern = re.compile(rf"\.(?:{names})\.[0-9a-f]{{12}}\.tmp")  # exactly what atomic_write_bytes makes
    try:
        for entry in os.scandir(path):
            if pattern.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
    except OSError as e:
        raise os_error(e, path, "clean up") from None


@functools.cache  # one subprocess per process, not per run directory
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@functools.cache
def git_dirty() -> bool | None:
    """Whether the package's git checkout has uncommitted changes (None outside a checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def manifest(cfg: RunConfig, started: float, ended: float, **extra: Any) -> dict[str, Any]:
    import jax
    import jaxlib
    import scipy

    from . import __version__

    return {
        "package": "icl-dynamics",
        "version": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "python": platform.python_version(),
        "device": str(jax.devices()[0]),
        "seed": cfg.seed,
        "config_hash": cfg.hash(),
        "started": started,
        "ended": ended,
        "started_utc": _iso(started),
        "ended_utc": _iso(ended),
        "wall_time_s": ended - started,
        **extra,
    }


def write_config(path: Path, cfg: RunConfig) -> None:
    atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_run_dir(out: Path, cfg: RunConfig, result: TrainResult, started: float,
                  engine_report: dict[str, Any] | None = None, phases: dict | None = None,
                  **manifest_extra: Any) -> None:
    """The outputs of a finished (or diverged) run: trajectory.npz, params.npz, eval_trajectory.npz (the
    ``eval:`` block's rows, ``result.watched``), metrics.parquet, phases.json, manifest.json, and summary.json
    last, the commit point (config.yaml is written when the run starts; the caller removes the checkpoint
    after this)."""
    import time

    probs = feature_probs(cfg.data)
    traj = result.trajectory
    save_npz(out / "trajectory.npz", to_arrays(traj, probs))
    if result.params is not None:
        import jax

        save_npz(out / "params.npz", {f"param_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(result.params))})
    if result.watched is not None:
        from .config import with_overrides

        eval_probs = feature_probs(with_overrides(cfg, dict(cfg.eval)).data)
        save_npz(out / "eval_trajectory.npz", to_arrays(result.watched, eval_probs))
    save_parquet(out / "metrics.parquet", metrics_table(traj, probs))
    if not has_features(traj):  # Gaussian tokens: no features, hence no phases
        phases = {"setting": "no features", "eps": cfg.eps, "features": [],
                  "note": "per-feature quantities and phases do not apply to these tokens (data.tokens)"}
    atomic_write_json(out / "phases.json", phases or detect_phases(traj, probs, cfg.eps, setting_name(cfg.data)))
    atomic_write_json(out / "manifest.json", manifest(cfg, started, time.time(), **manifest_extra))
    extra = {"diverged_at": result.diverged_at} if result.status == "diverged" else {}
    if engine_report:
        extra["engine"] = engine_report
    atomic_write_json(out / "summary.json", summarize(traj, cfg.eps, result.status, **extra))  # the commit point


class Run(NamedTuple):
    """A loaded run directory."""

    path: Path
    config: RunConfig
    trajectory: Trajectory
    probs: np.ndarray
    summary: dict[str, Any]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a run or sweep folder: a regular file of bounded size; one line if not."""
    if not os.path.lexists(path):
        raise RunDirError(f"run directory '{clip(path.parent)}' has no {path.name}")
    try:  # a regular file only (never a FIFO, device or /proc file), read up to the limit, never blocking
        text = read_text(path, what="run file", limit=MAX_JSON_BYTES)
    except ConfigError as e:
        raise RunDirError(f"{e}; the folder is damaged") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise RunDirError(f"'{clip(path)}' is damaged (not valid JSON)") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"'{clip(path)}' is damaged (expected a JSON object)")
    return obj


def check_run_dir(path: Path) -> Path:
    """``path`` if it is a folder; one line naming what it is otherwise (never an OSError: a name too long,
    a NUL byte, a path through a file are all one line)."""
    check_path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            raise RunDirError(f"run directory '{clip(path)}' is a symlink that leads nowhere (or in a loop)") from None
        if e.errno == errno.ENOENT:
            raise RunDirError(f"run directory '{clip(path)}' does not exist") from None
        raise os_error(e, path, "open") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run directory '{clip(path)}' is not a folder")
    return path


def load_config_file(run_dir: Path) -> RunConfig:
    from .config import read_yaml

    p = run_dir / "config.yaml"
    if not os.path.lexists(p):  # a symlink loop or dangling link is named by read_yaml, not called missing
        raise RunDirError(f"run directory '{clip(run_dir)}' has no config.yaml")
    try:
        tree = read_yaml(p, what="run config")
        if not tree:
            raise RunDirError(f"'{clip(p)}' is empty; the run directory is damaged")
        return validate(tree)
    except ConfigError as e:
        raise RunDirError(f"'{clip(p)}' is not a valid config for this version: {e}") from None


def read_budget(cfg: RunConfig) -> int:
    """Bytes a run directory's arrays may declare: no more than the run itself holds (its config's memory
    estimate, which counts the logged trajectory), and never more than the memory ceiling. A small file
    that declares or inflates to gigabytes is refused from its headers (fsio_npz)."""
    return min(memory_ceiling(), cfg.memory().bytes)


def load_trajectory(run_dir: Path, K: int, max_bytes: int | None = None) -> tuple[Trajectory, np.ndarray]:
    """trajectory.npz, its declared shapes checked against K (and its size against ``max_bytes``, by default
    the memory ceiling) before any data is read; steps must be finite, >= 0 and increasing."""
    p = run_dir / "trajectory.npz"
    if not os.path.lexists(p):
        hint = (f"; resume it with 'icl-dynamics train --resume {clip(run_dir)}'"
                if (run_dir / "checkpoint.npz").is_file() else " (was the run finished?)")
        raise RunDirError(f"run directory '{clip(run_dir)}' has no trajectory.npz{hint}")
    want = {k: ((None, *shape[1:]), "iuf") for k, shape in expected_shapes(1, K).items()}
    want["probs"] = ((K,), "f")
    arrays = load_npz_checked(p, want, max_bytes=memory_ceiling() if max_bytes is None else max_bytes)
    T = arrays["steps"].shape[0]
    if T < 1:
        raise RunDirError(f"'{clip(p)}' is damaged: array 'steps' holds no logged rows")
    for k, shape in expected_shapes(T, K).items():
        if arrays[k].shape != shape:
            raise RunDirError(f"'{clip(p)}' is damaged: array '{k}' has shape {arrays[k].shape}, expected {shape} "
                              f"({T} rows, K={K})")
    steps = arrays["steps"].astype(np.float64)
    if not (np.all(np.isfinite(steps)) and steps[0] >= 0 and np.all(np.diff(steps) > 0)):
        raise RunDirError(f"'{clip(p)}' is damaged: its steps are not finite, non-negative and increasing")
    return from_arrays(arrays), arrays["probs"]


def load_eval_trajectory(run_dir: Path, K: int) -> Trajectory | None:
    """eval_trajectory.npz (the ``eval:`` block's curves), or None when the run has none."""
    p = run_dir / "eval_trajectory.npz"
    if not p.exists():
        return None
    want = {k: ((None, *shape[1:]), "iuf") for k, shape in expected_shapes(1, K).items()}
    want["probs"] = ((K,), "f")
    return from_arrays(load_npz_checked(p, want, max_bytes=memory_ceiling()))


def load_params(run_dir: Path, template: Any) -> Any:
    """params.npz as the pytree of ``template`` (an engine's init): shapes checked before reading."""
    import jax

    p = run_dir / "params.npz"
    if not p.exists():
        raise RunDirError(f"run directory '{clip(run_dir)}' has no params.npz: its final parameters were not "
                          f"kept (the run did not finish, or an older version of icl-dynamics wrote it)")
    leaves, treedef = jax.tree.flatten(template)
    want = {f"param_{i}": (tuple(np.shape(x)), "f") for i, x in enumerate(leaves)}
    arrays = load_npz_checked(p, want, max_bytes=memory_ceiling())
    return jax.tree.unflatten(treedef, [arrays[f"param_{i}"] for i in range(len(leaves))])


def load_run(path: str | Path) -> Run:
    """Load a finished run directory, with a one-line :class:`RunDirError` for anything missing or damaged."""
    path = check_run_dir(Path(path))
    cfg = load_config_file(path)
    traj, probs = load_trajectory(path, cfg.data.num_features, read_budget(cfg))
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    return Run(path, cfg, traj, probs, summary)
