"""One run end to end: config -> engine -> trainer -> run directory (storage.py).

While training, ``checkpoint.npz`` is rewritten every ``checkpoint.interval(cfg)`` steps and on
SIGINT/SIGTERM; :func:`resume` continues from it. ``summary.json`` always says where the run stands:
``running``, ``interrupted`` (signal, step), ``failed`` (reason), ``diverged`` or ``completed``. One process
writes a run directory at a time (an flock on RUN_DIR/.lock); a second one is refused, naming the first.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from . import checkpoint
from .config import RunConfig
from .engines import build_engine
from .evaluate import eval_watch, run_report
from .errors import Interrupted, RunDirError, StorageError
from .fsio import DirLock, clip
from .storage import (atomic_write_json, check_run_dir, is_finished, load_config_file, prepare_run_dir,
                      remove_stale_temps, run_status, write_config, write_run_dir)
from .schedule import stop_rule
from .trainer import TrainResult, TrainState, fault_step_from_env, log_schedule, train


def execute(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train ``cfg`` and write its run directory. The summary says ``running`` until the run ends, so an
    interrupted directory never looks finished."""
    fault_step_from_env()  # a malformed fault aid fails before anything is written
    engine, watch = build_engine(cfg), eval_watch(cfg)  # may refuse the config: before --out is touched
    with DirLock(out):
        out = prepare_run_dir(out, overwrite)
        write_config(out, cfg)
        return _train_into(cfg, out, progress=progress, engine=engine, watch=watch)


def resume(run_dir: str | Path, *, progress: bool = True) -> TrainResult:
    """Continue the unfinished run in ``run_dir`` from its checkpoint, with the config stored there. The
    files it ends with equal those of an uninterrupted run. One-line :class:`RunDirError` for a finished,
    damaged or checkpoint-less directory, or one another process is writing."""
    run_dir = check_run_dir(Path(run_dir))
    with DirLock(run_dir, "run directory", create=False):
        cfg = load_config_file(run_dir)
        if is_finished(run_dir):
            checkpoint.remove(run_dir)  # a kill after the commit point can leave it behind
            raise RunDirError(f"run directory '{clip(run_dir)}' is already finished (status "
                              f"{run_status(run_dir)}); nothing to resume")
        checkpoint.require(run_dir)  # before the (possibly slow) engine build
        engine = build_engine(cfg)
        start, _ = checkpoint.load(run_dir, cfg, engine, log_schedule(cfg.train.steps, cfg.train.log_every))
        remove_stale_temps(run_dir)
        return _train_into(cfg, run_dir, progress=progress, start=start, engine=engine)


def _mark(out: Path, summary: dict[str, Any]) -> None:
    """Write an end-of-run summary even on a full disk: if it cannot be written, the stale one (which may
    say "running") is removed, so the folder never claims a run is going on."""
    try:
        atomic_write_json(out / "summary.json", summary)
    except (StorageError, OSError):
        try:
            (out / "summary.json").unlink(missing_ok=True)
        except OSError:
            pass


def _train_into(cfg: RunConfig, out: Path, *, progress: bool, start: TrainState | None = None,
                engine=None, watch=None) -> TrainResult:
    started = time.time()
    hint = {"resume": f"icl-dynamics train --resume {out}"}
    try:
        atomic_write_json(out / "summary.json",
                          {"status": "running", **({"resumed_from": start.step} if start else {})})
        engine = engine or build_engine(cfg)

        def save(state: TrainState, reason: str) -> None:
            checkpoint.save(out, cfg, engine, state, reason)

        phases = None
        report = {}
        watch = watch or eval_watch(cfg)
        if cfg.train.method == "flow":  # fast and deterministic: no checkpoints
            from .flow import run_flow

            result, phases, report["flow"] = run_flow(engine, cfg, watch=watch)
        else:
            every, min_seconds = checkpoint.interval(cfg)
            result = train(engine, log_schedule(cfg.train.steps, cfg.train.log_every), progress=progress,
                           fault_step=fault_step_from_env(), start=start, checkpoint_every=every,
                           on_checkpoint=save, min_checkpoint_seconds=min_seconds, stop=stop_rule(cfg), watch=watch)
        report.update(run_report(cfg, engine, result))
        write_run_dir(out, cfg, result, started, report, phases, **({"resumed_from": start.step} if start else {}))
    except Interrupted as e:
        _mark(out, {"status": "interrupted", "signal": signal.Signals(e.signum).name, "step": e.step,
                    **(hint if e.saved else {})})
        raise
    except BaseException as e:
        saved = (out / checkpoint.CHECKPOINT).is_file()
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        _mark(out, {"status": status, "reason": clip(f"{type(e).__name__}: {e}", 300), **(hint if saved else {})})
        raise
    checkpoint.remove(out)  # after the commit point (summary.json): trajectory.npz holds everything
    return result
