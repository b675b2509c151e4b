"""Run directories: atomic writes, manifests, and loading with clear errors.

Layout of a run directory::

    config.yaml        fully resolved config
    manifest.json      versions, git commit, device, seed, config hash, times
    trajectory.npz     steps, loss, feature_loss, scores, attention, probs (float64)
    metrics.parquet    tidy (step, feature, ...) table
    summary.json       status, final losses, first step with feature_loss <= eps per feature
    checkpoint.npz     only while a run is unfinished: see checkpoint.py
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import subprocess
import secrets
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .config import RunConfig, validate
from .data import feature_probs, setting_name
from .errors import ConfigError, RunDirError
from .measures import metrics_table, summarize
from .phases import detect_phases
from .trainer import TrainResult
from .trajectory import Trajectory, expected_shapes, from_arrays, to_arrays

ARTIFACTS = ("config.yaml", "manifest.json", "trajectory.npz", "metrics.parquet", "summary.json", "phases.json",
             "checkpoint.npz")
TRAJECTORY_KEYS = ("steps", "loss", "feature_loss", "scores", "attention", "probs")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    # like mkstemp (O_EXCL, a random name) but with mode 0666 less the umask, the mode of a plain open()
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


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


def prepare_output_dir(path: str | Path, overwrite: bool, owned: list[str], what: str = "run") -> Path:
    """Create ``path``; refuse a non-empty one unless ``overwrite``, which removes only the ``owned`` files
    (relative paths) and their leftover temporaries: nothing a user put there is lost."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out '{path}' exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(f"--out '{path}' exists and is not empty; pass --overwrite to replace its {what}")
        for rel in owned:
            target = path / rel
            target.unlink(missing_ok=True)
            for tmp in target.parent.glob(f".{target.name}.*.tmp"):
                tmp.unlink(missing_ok=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create output folder '{path}': {e.strerror}") from None
    return path


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """A run directory: :func:`prepare_output_dir` owning the run's :data:`ARTIFACTS`."""
    if not overwrite and (Path(path) / "checkpoint.npz").is_file():
        raise RunDirError(f"--out '{path}' holds an unfinished run with a checkpoint; continue it with "
                          f"'icl-dynamics train --resume {path}' (or pass --overwrite to discard it)")
    return prepare_output_dir(path, overwrite, list(ARTIFACTS), "run")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files that a killed process left behind mid-write (``.NAME.*.tmp``)."""
    for name in ARTIFACTS:
        for tmp in path.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


@functools.cache  # one subprocess per process, not per run directory
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(cfg: RunConfig, started: float, ended: float, **extra: Any) -> dict[str, Any]:
    import jax

    from . import __version__

    return {
        "package": "icl-dynamics",
        "version": __version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "device": str(jax.devices()[0]),
        "seed": cfg.seed,
        "config_hash": cfg.hash(),
        "started": started,
        "ended": ended,
        "wall_time_s": ended - started,
        **extra,
    }


def write_config(path: Path, cfg: RunConfig) -> None:
    atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_run_dir(out: Path, cfg: RunConfig, result: TrainResult, started: float, **manifest_extra: Any) -> None:
    """The outputs of a finished (or diverged) run: trajectory.npz, metrics.parquet, phases.json,
    summary.json, then manifest.json (config.yaml is written when the run starts)."""
    import time

    probs = feature_probs(cfg.data)
    traj = result.trajectory
    save_npz(out / "trajectory.npz", to_arrays(traj, probs))
    save_parquet(out / "metrics.parquet", metrics_table(traj, probs))
    atomic_write_json(out / "phases.json", detect_phases(traj, probs, cfg.eps, setting_name(cfg.data)))
    extra = {"diverged_at": result.diverged_at} if result.status == "diverged" else {}
    atomic_write_json(out / "summary.json", summarize(traj, cfg.eps, result.status, **extra))
    atomic_write_json(out / "manifest.json", manifest(cfg, started, time.time(), **manifest_extra))


class Run(NamedTuple):
    """A loaded run directory."""

    path: Path
    config: RunConfig
    trajectory: Trajectory
    probs: np.ndarray
    summary: dict[str, Any]


def read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"run directory '{path.parent}' has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise RunDirError(f"{path} is damaged (not valid JSON)") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path} is damaged (expected a JSON object)")
    return obj


def load_config_file(run_dir: Path) -> RunConfig:
    from .config import read_yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        raise RunDirError(f"run directory '{run_dir}' has no config.yaml")
    try:
        return validate(read_yaml(p))
    except ConfigError as e:
        raise RunDirError(f"{p} is not a valid config for this version: {e}") from None


def load_trajectory(run_dir: Path, K: int) -> tuple[Trajectory, np.ndarray]:
    p = run_dir / "trajectory.npz"
    if not p.is_file():
        hint = (f"; resume it with 'icl-dynamics train --resume {run_dir}'" if (run_dir / "checkpoint.npz").is_file()
                else " (was the run finished?)")
        raise RunDirError(f"run directory '{run_dir}' has no trajectory.npz{hint}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in TRAJECTORY_KEYS}
    except KeyError as e:
        raise RunDirError(f"{p} lacks array {e}; it is from another version or damaged") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise RunDirError(f"{p} is damaged (not a readable .npz)") from None
    T = arrays["steps"].shape[0] if arrays["steps"].ndim == 1 else -1
    want = {**expected_shapes(T, K), "probs": (K,)}
    for k, shape in want.items():
        if T < 1 or arrays[k].shape != shape:
            raise RunDirError(f"{p}: array '{k}' has shape {arrays[k].shape}, expected {shape} for K={K}")
        if arrays[k].dtype.kind not in "iuf":
            raise RunDirError(f"{p}: array '{k}' has dtype {arrays[k].dtype}, expected numbers")
    return from_arrays(arrays), arrays["probs"]


def load_run(path: str | Path) -> Run:
    """Load a finished run directory, with a one-line :class:`RunDirError` for anything missing or damaged."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory '{path}' does not exist")
    cfg = load_config_file(path)
    traj, probs = load_trajectory(path, cfg.data.num_features)
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else {}
    return Run(path, cfg, traj, probs, summary)
