"""Running a sweep: plan, skip what rows/ already holds, compute the rest in this process, on local worker
processes or on a Dask cluster, and commit each batch's rows atomically.

A batch's rows land in one atomic write, so a kill (even ``kill -9``) loses at most the batches in flight,
never a finished row, and never leaves a half row.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ..errors import SweepError
from ..fsio import DirLock, safe_dir
from ..progress import progress_bar
from ..storage import save_parquet
from ..measures import config_columns
from .plan import Batch, plan_batches
from .spec import SweepSpec, expand, idle_axes, load_spec
from .store import ROWS_DIR, check_table_file, prepare_sweep_dir, read_rows, rebuild, table, write_run_dir_of
from .worker import run_batch

REBUILD_EVERY_S = 2.0  # how often sweep.parquet is refreshed while a sweep runs (it is always at the end)


@contextmanager
def _rebuilt_at_exit(out: Path, known: set[str]) -> Iterator[None]:
    """sweep.parquet is rebuilt when the sweep ends, also by an error or Ctrl-C (not by kill -9: then the
    next run, or load_sweep, reads rows/)."""
    try:
        yield
    finally:
        rebuild(out, known)


def _results(batches: list[Batch], keep: bool, cluster: str | None, workers: int) -> Iterator[tuple]:
    """Yield (batch, results, error) as batches finish: in this process when there is one worker and no
    cluster, else as Dask tasks (a LocalCluster of processes, or an existing scheduler at ``cluster``)."""
    payload = {b.id: [r.config.to_dict() for r in b.runs] for b in batches}
    if cluster is None and workers <= 1:
        for b in batches:
            yield b, run_batch(payload[b.id], keep), None
        return
    from dask.distributed import Client, LocalCluster, as_completed

    with ExitStack() as stack:
        if cluster is None:
            local = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=logging.ERROR))
            client = stack.enter_context(Client(local))
        else:
            try:
                client = stack.enter_context(Client(cluster, timeout="20s"))
            except (OSError, TimeoutError, ValueError) as e:
                raise SweepError(f"cannot reach the Dask scheduler at '{cluster}' ({type(e).__name__})") from None
        # retries: a task whose worker died is rescheduled by Dask itself; retries also cover transient errors
        futures = {client.submit(run_batch, payload[b.id], keep, key=f"icl-sweep-{b.id}", retries=2): b
                   for b in batches}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result(), None
            except Exception as e:  # noqa: BLE001 - reported after the other batches are saved
                yield futures[fut], None, e


def _part_path(rows_dir: Path, batch_id: str) -> Path:
    """rows/<batch>.parquet, or <batch>-1.parquet, ... when something that is not a regular file (a folder,
    a link) squats on the name: it is not ours to replace, and the rows must still be committed."""
    p, n = rows_dir / f"{batch_id}.parquet", 0
    while os.path.lexists(p) and (p.is_symlink() or not p.is_file()):
        n += 1
        p = rows_dir / f"{batch_id}-{n}.parquet"
    return p


def _run_batches(out: Path, spec: SweepSpec, todo: list[Batch], done: set[str], known: set[str], n_todo: int,
                 n_runs: int, cluster: str | None, workers: int, progress: bool) -> list[BaseException]:
    """Compute ``todo`` and commit each batch's rows (one atomic parquet part per batch). Returns the errors
    of failed batches; the other batches are saved first."""
    errors: list[BaseException] = []
    last = time.time()
    with progress_bar(progress) as bar, _rebuilt_at_exit(out, known):
        task = bar.add_task(f"sweep ({n_runs - n_todo} of {n_runs} runs already done)", total=n_todo)
        for batch, results, err in _results(todo, spec.keep_trajectories, cluster, workers):
            if err is not None:
                errors.append(err)
                continue
            rows = []
            for run, res in zip(batch.runs, results):
                if run.hash in done:  # never rewrite a finished row
                    continue
                row = {"run": run.index, "config_hash": run.hash, **config_columns(run.config), **res.row}
                if spec.keep_trajectories:
                    write_run_dir_of(out, run.config, res.trajectory, row, res.params, res.watched, res.report)
                rows.append(row)
            if rows:
                save_parquet(_part_path(out / ROWS_DIR, batch.id), table(rows))  # the commit point
            done.update(r["config_hash"] for r in rows)
            bar.update(task, advance=len(batch.runs))
            if time.time() - last > REBUILD_EVERY_S:
                rebuild(out, known)
                last = time.time()
    return errors


def run_sweep(spec_or_path: SweepSpec | dict[str, Any] | str | Path, out: str | Path, cluster: str | None = None,
              workers: int | None = None, progress: bool = True):
    """Run (or resume) a sweep into ``out`` and return its table (pandas DataFrame, one row per run).

    ``workers``: local worker processes (default: the CPU count, at most one per batch; 1 runs in this
    process). ``cluster``: address of an existing Dask scheduler, used instead of local workers.
    ``df.attrs['sweep']`` says how many runs were computed now and how many were already done. Batches
    that fail are reported (the first error is raised) after every other batch is saved.
    """
    started = time.time()
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    spec = load_spec(spec_or_path)
    runs = expand(spec)
    idle = idle_axes(spec, runs)
    batches = plan_batches(runs, spec.max_batch)
    known = {r.hash for r in runs}
    with DirLock(out):
        out = prepare_sweep_dir(out, spec)
        check_table_file(out)  # before any work: the table could not be written at the end
        rows_dir = safe_dir(out, ROWS_DIR)
        for tmp in rows_dir.glob(".*.parquet.*.tmp"):  # leftovers of a write cut short by a kill
            if tmp.is_symlink() or tmp.is_file():
                tmp.unlink(missing_ok=True)
        notes: list[str] = list(idle)
        done = {r["config_hash"] for r in read_rows(out, known, notes)}
        for note in notes:  # only once every refusal (spec, --out, the folder) has passed: an error stays one line
            print(f"icl-dynamics: warning: {note}", file=sys.stderr)
        todo = [b for b in batches if not all(r.hash in done for r in b.runs)]
        n_todo = sum(len(b.runs) for b in todo)
        workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
        errors = _run_batches(out, spec, todo, done, known, n_todo, len(runs), cluster, workers, progress)
        rows = read_rows(out, known)
    if errors:
        raise errors[0]
    df = table(rows).to_pandas()
    df.attrs["sweep"] = {"runs": len(runs), "computed": n_todo, "skipped": len(runs) - n_todo,
                         "batches": len(todo), "workers": 0 if cluster else workers, "cluster": cluster,
                         "diverged": int((df["status"] == "diverged").sum()) if len(df) else 0,
                         "wall_time_s": time.time() - started}
    return df

