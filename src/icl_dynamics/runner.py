"""One run end to end: config -> engine -> trainer -> observers -> run directory."""

from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig
from .data import feature_probs
from .observers import metrics_table, summarize
from .storage import (atomic_write_json, manifest, prepare_run_dir, save_npz, save_parquet, trajectory_arrays,
                      write_config)
from .trainer import TrainResult, run_training


def execute(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train ``cfg`` and write its run directory. The summary says ``running`` until the run ends, so an
    interrupted directory never looks finished."""
    out = prepare_run_dir(out, overwrite)
    write_config(out, cfg)
    atomic_write_json(out / "summary.json", {"status": "running"})
    started = time.time()
    try:
        result = run_training(cfg, progress=progress)
    except BaseException as e:
        atomic_write_json(out / "summary.json", {"status": "failed", "reason": f"{type(e).__name__}: {e}"})
        raise
    probs = feature_probs(cfg.data)
    traj = result.trajectory
    save_npz(out / "trajectory.npz", trajectory_arrays(traj, probs))
    save_parquet(out / "metrics.parquet", metrics_table(traj, probs))
    extra = {"diverged_at": result.diverged_at} if result.status == "diverged" else {}
    atomic_write_json(out / "summary.json", summarize(traj, cfg.eps, result.status, **extra))
    atomic_write_json(out / "manifest.json", manifest(cfg, started, time.time()))
    return result
