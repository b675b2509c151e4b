"""Sweeps: a grid of runs, vectorised with ``jax.vmap``, spread over Dask workers, stored resumably.

Flow: spec (YAML) -> validated configs (one per grid point) -> batches of runs sharing array shapes ->
``run_batch`` (one jitted ``vmap`` of :func:`trainer.scan_rows` per batch, on a worker) -> one row per run.

Layout of a sweep directory (docs/sweeps.md)::

    sweep.yaml         the normalised spec; a different spec in the same folder is refused
    rows/<batch>.parquet   the rows of one finished batch, written atomically (the source of truth)
    sweep.parquet      all rows, deduplicated by config_hash, rebuilt atomically from rows/
    runs/<config_hash>/    a run directory per run, only with ``keep_trajectories: true``

A batch's rows land in one atomic write, so a kill (even ``kill -9``) loses at most the batches in flight,
never a finished row, and never leaves a half row. Re-running the same spec skips every batch whose runs
are all in rows/; batches are planned from the whole spec, so a resumed sweep computes exactly the batches
an uninterrupted one would (same numbers, bit for bit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import RunConfig, read_yaml, set_dotted, validate, with_overrides
from .errors import ConfigError, RunDirError, UserError

SPEC_FILE, TABLE_FILE, ROWS_DIR, RUNS_DIR = "sweep.yaml", "sweep.parquet", "rows", "runs"
AXIS_FORMS = ("range", "linspace", "logspace", "int_logspace")
REBUILD_EVERY_S = 2.0  # how often sweep.parquet is refreshed while a sweep runs (it is always at the end)


class SweepError(UserError):
    """A sweep spec or sweep directory problem (exit 2)."""


# ----------------------------------------------------------------------------------------------- spec


class SweepSpec(BaseModel):
    """The top level of a sweep YAML. ``base`` and ``grid`` keys are dotted config keys."""

    model_config = ConfigDict(extra="forbid", strict=True)
    base: dict[str, Any] = Field(default_factory=dict, description="config values shared by every run")
    grid: dict[str, Any] = Field(default_factory=dict, description="axes; the sweep is their product")
    seeds: int | None = Field(None, ge=1, description="shorthand for the axis seed: {range: [0, seeds]}")
    keep_trajectories: bool = Field(False, description="write a run directory per run under runs/")
    max_batch: int = Field(16, ge=1, description="most runs in one vectorised batch")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _axis_values(key: str, raw: Any) -> list[Any]:
    """Expand one grid axis: a list, or one of {range|linspace|logspace|int_logspace: [...]}."""
    where = f"grid '{key}'"
    if isinstance(raw, list):
        if not raw:
            raise SweepError(f"{where} is an empty list")
        return raw
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in AXIS_FORMS):
        raise SweepError(f"{where} must be a list or one of {{range|linspace|logspace|int_logspace: [...]}}, "
                         f"got {raw!r}")
    form, args = next(iter(raw.items()))
    nums = args if isinstance(args, list) else None
    if nums is None or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in nums):
        raise SweepError(f"{where}: {form} expects a list of numbers, got {args!r}")
    if form == "range":
        if not 1 <= len(nums) <= 3 or any(not isinstance(a, int) for a in nums):
            raise SweepError(f"{where}: range expects [stop], [start, stop] or [start, stop, step] integers "
                             f"(stop excluded), got {args!r}")
        if len(nums) == 3 and nums[2] == 0:
            raise SweepError(f"{where}: range step must not be 0")
        values: list[Any] = list(range(*nums))
    else:
        if len(nums) != 3 or not isinstance(nums[2], int) or nums[2] < 1:
            raise SweepError(f"{where}: {form} expects [first, last, count] with an integer count >= 1, "
                             f"got {args!r}")
        lo, hi, n = float(nums[0]), float(nums[1]), nums[2]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise SweepError(f"{where}: {form} bounds must be finite, got {args!r}")
        if form == "linspace":
            values = [float(v) for v in np.linspace(lo, hi, n)]
        elif lo <= 0 or hi <= 0:
            raise SweepError(f"{where}: {form} bounds must be > 0, got {args!r}")
        elif form == "logspace":
            values = [float(v) for v in np.geomspace(lo, hi, n)]
        else:  # int_logspace: rounded, duplicates dropped, order kept
            values = list(dict.fromkeys(int(v) for v in np.rint(np.geomspace(lo, hi, n))))
    if not values:
        raise SweepError(f"{where}: {form} {args!r} gives no values")
    return values


def parse_spec(obj: dict[str, Any]) -> SweepSpec:
    """Validate the top level of a spec; one-line :class:`SweepError` naming the bad key."""
    if not isinstance(obj, dict):
        raise SweepError(f"a sweep spec must be a mapping, not {type(obj).__name__}")
    try:
        spec = SweepSpec.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(SweepSpec.model_fields)
            raise SweepError(f"unknown sweep key '{loc}' (known: {known})") from None
        raise SweepError(f"invalid sweep value for '{loc}': {err['msg']} (got {err.get('input')!r})") from None
    if spec.seeds is not None and "seed" in spec.grid:
        raise SweepError("give the seeds either as 'seeds:' or as the grid axis 'seed', not both")
    return spec


def normalise(spec: SweepSpec) -> dict[str, Any]:
    """The spec as stored in sweep.yaml: base flattened to dotted keys, axes as written."""
    d = spec.model_dump(mode="json")
    d["base"] = _flatten(d["base"])
    return d


def load_spec(spec: SweepSpec | dict[str, Any] | str | Path) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    return parse_spec(read_yaml(spec))


class PlannedRun(NamedTuple):
    index: int  # position in the grid (first occurrence)
    config: RunConfig
    hash: str


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """Every grid point as a validated config, in grid order; configs with equal hashes appear once."""
    tree: dict[str, Any] = {}
    flat_base = _flatten(spec.base)
    for key, value in flat_base.items():
        set_dotted(tree, key, value)
    try:
        base = validate(tree)
    except ConfigError as e:
        raise SweepError(f"sweep base: {e}") from None
    axes = {k: _axis_values(k, v) for k, v in spec.grid.items()}
    if spec.seeds is not None:
        axes["seed"] = list(range(spec.seeds))
    if not axes:
        raise SweepError("the grid is empty; give at least one axis under 'grid:' (or 'seeds:')")
    keys = list(axes)
    # a d set in the base stays fixed; otherwise with_overrides keeps d tied to K
    pinned = {"data.dim": base.data.dim} if "data.dim" in flat_base else {}
    runs: dict[str, PlannedRun] = {}
    for i, combo in enumerate(np.ndindex(*(len(axes[k]) for k in keys))):
        point = {k: axes[k][j] for k, j in zip(keys, combo)}
        try:
            cfg = with_overrides(base, {**pinned, **point})
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise SweepError(f"{e} (grid point {shown})") from None
        h = cfg.hash()
        runs.setdefault(h, PlannedRun(i, cfg, h))
    return list(runs.values())


# ------------------------------------------------------------------------------------------- batching


class Batch(NamedTuple):
    id: str
    runs: list[PlannedRun]


def batch_key(cfg: RunConfig) -> tuple:
    """Runs with equal keys have equal array shapes and code paths, so they can share one ``vmap``.

    Values (lr, p, N in a mean-field or Monte Carlo table, seed) are left out: they are traced arrays.
    An exact table's size depends on N (and on which count vectors have non-zero probability), so exact runs
    are keyed by N and the worker splits a batch further if the tables still differ.
    """
    d, m, t = cfg.data, cfg.model, cfg.train
    key: tuple = (t.engine, d.num_features, m.include_query_in_softmax, m.attention, t.steps, t.log_every)
    if t.engine == "population":
        size = {"exact": ("N", d.prompt_length), "monte_carlo": ("M", t.count_samples), "mean_field": ()}
        return key + (t.expectation, size[t.expectation])
    return key + (d.dim, d.prompt_length, t.batch_size, t.eval_prompts)


def plan_batches(runs: list[PlannedRun], max_batch: int) -> list[Batch]:
    """Group by :func:`batch_key`, then split each group into near-equal batches of at most ``max_batch``.

    The plan depends only on the spec (not on workers or on what is already done), which makes a resumed
    or distributed sweep compute the same batches as a local, uninterrupted one.
    """
    groups: dict[tuple, list[PlannedRun]] = defaultdict(list)
    for r in runs:
        groups[batch_key(r.config)].append(r)
    batches = []
    for members in groups.values():
        n = math.ceil(len(members) / max_batch)
        for part in np.array_split(np.arange(len(members)), n):
            chunk = [members[i] for i in part]
            bid = hashlib.sha256("".join(r.hash for r in chunk).encode()).hexdigest()[:16]
            batches.append(Batch(bid, chunk))
    return batches


# ------------------------------------------------------------------------------------------ execution


def _batched(update, observe, static, consts, params, step, targets, fault_step=None):
    """:func:`trainer.scan_rows` vmapped over the leading axis of consts, params and step (targets shared)."""
    from .trainer import scan_rows

    def one(c, p, s):
        return scan_rows(update, observe, static, c, p, s, targets, fault_step)

    return jax.vmap(one)(consts, params, step)


# Like trainer.advance: functions and static are compile-time constants, so a worker compiles once per
# batch structure and reuses the code for every later batch of that structure.
batched_advance = jax.jit(_batched, static_argnames=("update", "observe", "static", "fault_step"))


def _structure(engine, schedule: np.ndarray) -> tuple:
    leaves, treedef = jax.tree.flatten((engine.consts, engine.init))
    return (engine.name, engine.static, engine.update, engine.observe, treedef,
            tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves), schedule.tobytes())


def _train_vmapped(engines: list, schedule: np.ndarray, fault_step: int | None):
    """Train engines with identical structure as one computation. Returns [(Trajectory, status, diverged_at)]."""
    import jax.numpy as jnp

    from .trainer import Trajectory

    e0 = engines[0]
    consts = jax.tree.map(lambda *xs: np.stack(xs), *[e.consts for e in engines])
    params = jax.tree.map(lambda *xs: np.stack(xs), *[e.init for e in engines])
    step0 = np.zeros(len(engines), np.int64)
    (_, step, ok), (row_steps, metrics) = batched_advance(
        e0.update, e0.observe, e0.static, consts, params, step0, jnp.asarray(schedule), fault_step=fault_step)
    step, ok, row_steps, metrics = jax.device_get((step, ok, row_steps, metrics))
    out = []
    for i in range(len(engines)):
        keep = np.concatenate([[True], np.diff(row_steps[i]) > 0])  # drop rows repeated after divergence
        traj = Trajectory(row_steps[i][keep], *(np.asarray(m[i])[keep] for m in metrics))
        fine = bool(ok[i])
        out.append((traj, "completed" if fine else "diverged", None if fine else int(step[i]) + 1))
    return out


def run_batch(configs: list[dict[str, Any]], keep_trajectories: bool = False) -> list[dict[str, Any]]:
    """Worker task: train a batch of runs (config dicts) with ``vmap`` and derive one row per run.

    Returns, per run in input order, ``{"row": {...}, "trajectory": {name: array} | None}``. Pure: it reads
    and writes no files, so it runs the same on a local process or a remote Dask worker.
    """
    from .data import feature_probs
    from .objectives import build_engine
    from .storage import trajectory_arrays
    from .trainer import fault_step_from_env, log_schedule

    started = time.time()
    cfgs = [validate(c) for c in configs]
    engines = [build_engine(c) for c in cfgs]
    schedules = [log_schedule(c.train.steps, c.train.log_every) for c in cfgs]
    subgroups: dict[tuple, list[int]] = defaultdict(list)
    for i, (e, s) in enumerate(zip(engines, schedules)):
        subgroups[_structure(e, s)].append(i)
    fault = fault_step_from_env()
    trained: dict[int, tuple] = {}
    for idx in subgroups.values():
        for i, res in zip(idx, _train_vmapped([engines[i] for i in idx], schedules[idx[0]], fault)):
            trained[i] = (*res, len(idx))
    per_run_s = (time.time() - started) / len(cfgs)
    results = []
    for i, cfg in enumerate(cfgs):
        traj, status, diverged_at, vmapped = trained[i]
        probs = feature_probs(cfg.data)
        row = derive(cfg, traj, probs, status, diverged_at)
        row.update(batch_runs=vmapped, wall_time_s=per_run_s)
        results.append({"row": row, "trajectory": trajectory_arrays(traj, probs) if keep_trajectories else None})
    return results


# ------------------------------------------------------------------------------------ derived quantities


def _slowest(times: list[int | None]) -> int | None:
    """The latest of some steps; None when empty or when any of them never happened."""
    return None if not times or any(t is None for t in times) else max(times)


def derive(cfg: RunConfig, traj, probs: np.ndarray, status: str = "completed",
           diverged_at: int | None = None) -> dict[str, Any]:
    """The per-run quantities stored in sweep.parquet (features 0-based; steps are logged steps).

    Groups follow :mod:`phases`: a dominant feature exists for imbalanced data (and for custom data with a
    unique most probable feature); every other feature is 'minor', and with no dominant feature (balanced)
    all features are, so ``time_to_eps_minor`` is then the slowest feature. Phase boundaries are
    ``<group>_phase_<name>_end`` (group: dominant | minor | balanced), the slowest feature of the group.
    """
    from .data import setting_name
    from .observers import first_step_below, time_to_eps
    from .phases import detect_phases

    phases = detect_phases(traj, probs, cfg.eps, setting_name(cfg.data))
    dom = [f["feature"] for f in phases["features"] if f["group"] == "dominant"]
    minor = [f["feature"] for f in phases["features"] if f["group"] != "dominant"]
    tte = time_to_eps(traj, cfg.eps)
    final_fl = traj.feature_loss[-1]
    own = np.diagonal(traj.attention[-1])
    row: dict[str, Any] = {
        "status": status,
        "diverged_at": diverged_at,
        "setting": phases["setting"],
        "final_step": int(traj.steps[-1]),
        "final_loss": float(traj.loss[-1]),
        "final_loss_dominant": float(final_fl[dom[0]]) if dom else None,
        "final_loss_minor": float(max(final_fl[k] for k in minor)),
        "time_to_eps_loss": first_step_below(traj.steps, traj.loss, cfg.eps),
        "time_to_eps_dominant": tte[dom[0]] if dom else None,
        "time_to_eps_minor": _slowest([tte[k] for k in minor]),
        "minor_converged_frac": float(np.mean([tte[k] is not None for k in minor])),
        "final_attention_own": float(own.mean()),
        "final_attention_leak": float(np.mean(1.0 - own)),  # mean_k (1 - attention[k, k])
    }
    ends: dict[str, list] = defaultdict(list)
    for feat in phases["features"]:
        for ph in feat["phases"]:
            name = re.sub(r"\W+", "_", str(ph["name"])).strip("_")
            ends[f"{feat['group']}_phase_{name}_end"].append(ph["end"])
    row.update({k: _slowest(v) for k, v in ends.items()})
    return row


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """Every config value under its dotted key; lists (explicit probs) as JSON strings."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in _flatten(cfg.to_dict()).items()}


# ------------------------------------------------------------------------------------------- storage


def _diff_key(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(dict.fromkeys([*old, *new])):
            if k not in old or k not in new:
                return f"{prefix}{k}"
            if (d := _diff_key(old[k], new[k], f"{prefix}{k}.")) is not None:
                return d
        return None
    return None if old == new else prefix.rstrip(".") or "spec"


def prepare_sweep_dir(out: str | Path, spec: SweepSpec) -> Path:
    """Create ``out`` with sweep.yaml, or accept it for resumption if it holds the same spec."""
    out = Path(out)
    norm = yaml.safe_load(yaml.safe_dump(normalise(spec), sort_keys=False))
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out '{out}' exists and is not a directory")
    if (out / SPEC_FILE).is_file():
        try:
            old = normalise(parse_spec(read_yaml(out / SPEC_FILE)))
        except UserError:
            raise RunDirError(f"{out / SPEC_FILE} is damaged; use a new --out") from None
        if (key := _diff_key(old, norm)) is not None:
            raise RunDirError(f"--out '{out}' holds a different sweep (its {SPEC_FILE} differs at '{key}'); "
                              f"use a new --out, or the same spec to resume")
        return out
    if out.is_dir() and any(out.iterdir()):
        raise RunDirError(f"--out '{out}' exists, is not empty and holds no {SPEC_FILE}; use a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create sweep directory '{out}': {e.strerror}") from None
    from .storage import atomic_write_text

    atomic_write_text(out / SPEC_FILE, yaml.safe_dump(norm, sort_keys=False))  # first: it marks the folder
    return out


def _read_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of every finished batch, oldest part first, deduplicated by config_hash (first kept)."""
    import pyarrow.parquet as pq

    parts = sorted((out / ROWS_DIR).glob("*.parquet"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    seen: dict[str, dict[str, Any]] = {}
    for p in parts:
        try:
            rows = pq.read_table(p).to_pylist()
        except Exception:  # noqa: BLE001 - any unreadable part is reported the same way
            raise RunDirError(f"{p} is damaged; delete it and re-run the sweep to recompute its runs") from None
        for r in rows:
            seen.setdefault(r["config_hash"], r)
    return sorted(seen.values(), key=lambda r: r["run"])


def _table(rows: list[dict[str, Any]]):
    """Rows -> pyarrow Table over the union of their keys (rows of other settings lack some columns)."""
    import pyarrow as pa

    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({k: [r.get(k) for r in rows] for k in keys})


def _rebuild(out: Path) -> list[dict[str, Any]]:
    from .storage import save_parquet

    rows = _read_rows(out)
    save_parquet(out / TABLE_FILE, _table(rows))
    return rows


def _write_runs(out: Path, cfg: RunConfig, arrays: dict[str, np.ndarray], row: dict[str, Any]) -> None:
    """A run directory exactly as ``train`` writes it (runner.py), before the batch's rows are committed,
    so a kill in between only means the batch runs again and rewrites it."""
    from .runner import _write_outputs
    from .storage import prepare_run_dir, write_config
    from .trainer import TrainResult, Trajectory

    path = prepare_run_dir(out / RUNS_DIR / row["config_hash"], overwrite=True)
    write_config(path, cfg)
    traj = Trajectory(*(arrays[k] for k in Trajectory._fields))
    _write_outputs(cfg, path, TrainResult(traj, None, row["status"], row["diverged_at"]),
                   time.time() - row["wall_time_s"], None)


def load_sweep(out: str | Path):
    """The sweep table as a pandas DataFrame: one row per finished run, in grid order."""
    out = Path(out)
    if not (out / SPEC_FILE).is_file():
        raise RunDirError(f"'{out}' is not a sweep directory (no {SPEC_FILE})")
    if not (out / ROWS_DIR).is_dir():
        return _table([]).to_pandas()
    return _table(_read_rows(out)).to_pandas()


# -------------------------------------------------------------------------------------------- driver


@contextmanager
def _rebuilt_at_exit(out: Path) -> Iterator[None]:
    """sweep.parquet is rebuilt when the sweep ends, also by an error or Ctrl-C (not by kill -9: then the
    next run, or load_sweep, reads rows/)."""
    try:
        yield
    finally:
        _rebuild(out)


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


def run_sweep(spec_or_path: SweepSpec | dict[str, Any] | str | Path, out: str | Path, cluster: str | None = None,
              workers: int | None = None, progress: bool = True):
    """Run (or resume) a sweep into ``out`` and return its table (pandas DataFrame, one row per run).

    ``workers``: local worker processes (default: the CPU count, at most one per batch; 1 runs in this
    process). ``cluster``: address of an existing Dask scheduler, used instead of local workers.
    ``df.attrs['sweep']`` says how many runs were computed now and how many were already done. Batches
    that fail are reported (the first error is raised) after every other batch is saved.
    """
    from .progress import progress_bar

    started = time.time()
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    spec = load_spec(spec_or_path)
    runs = expand(spec)
    batches = plan_batches(runs, spec.max_batch)
    out = prepare_sweep_dir(out, spec)
    (out / ROWS_DIR).mkdir(exist_ok=True)
    for tmp in (out / ROWS_DIR).glob(".*.tmp"):  # leftovers of a write cut short by a kill
        tmp.unlink(missing_ok=True)
    done = {r["config_hash"] for r in _read_rows(out)}
    todo = [b for b in batches if not all(r.hash in done for r in b.runs)]
    n_todo = sum(len(b.runs) for b in todo)
    workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
    errors: list[BaseException] = []
    last = time.time()
    with progress_bar(progress) as bar, _rebuilt_at_exit(out):
        task = bar.add_task(f"sweep ({len(runs) - n_todo} of {len(runs)} runs already done)", total=n_todo)
        for batch, results, err in _results(todo, spec.keep_trajectories, cluster, workers):
            if err is not None:
                errors.append(err)
                continue
            rows = []
            for run, res in zip(batch.runs, results):
                if run.hash in done:  # never rewrite a finished row
                    continue
                row = {"run": run.index, "config_hash": run.hash, **config_columns(run.config), **res["row"]}
                if spec.keep_trajectories:
                    _write_runs(out, run.config, res["trajectory"], row)
                rows.append(row)
            if rows:
                from .storage import save_parquet

                save_parquet(out / ROWS_DIR / f"{batch.id}.parquet", _table(rows))  # the commit point
            done.update(r["config_hash"] for r in rows)
            bar.update(task, advance=len(batch.runs))
            if time.time() - last > REBUILD_EVERY_S:
                _rebuild(out)
                last = time.time()
    rows = _read_rows(out)
    if errors:
        raise errors[0]
    df = _table(rows).to_pandas()
    df.attrs["sweep"] = {"runs": len(runs), "computed": n_todo, "skipped": len(runs) - n_todo,
                         "batches": len(todo), "workers": 0 if cluster else workers, "cluster": cluster,
                         "diverged": int((df["status"] == "diverged").sum()) if len(df) else 0,
                         "wall_time_s": time.time() - started}
    return df
