"""Sweep directories: the only code that reads and writes them.

    sweep.yaml             the normalised spec; a different spec in the same folder is refused
    .icl-dynamics, .lock   the marker (icl-dynamics made it) and the writer's lock
    rows/<batch>.parquet   the rows of one finished batch, written atomically (the source of truth)
    sweep.parquet          all rows, deduplicated by config_hash, rebuilt atomically from rows/
    runs/<config_hash>/    a run directory per run, only with ``keep_trajectories: true``
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..config import RunConfig, memory_ceiling, read_yaml
from ..errors import RunDirError, UserError
from ..fsio import regular_or_absent, check_path, clip, os_error, safe_dir
from ..fsio_owned import is_owned, mark_owned, prepare_owned_dir
from ..storage import atomic_write_text, prepare_run_dir, save_parquet, write_config, write_run_dir
from ..trainer import TrainResult
from ..trajectory import from_arrays
from .spec import SweepSpec, normalise, parse_spec

SPEC_FILE, TABLE_FILE, ROWS_DIR, RUNS_DIR = "sweep.yaml", "sweep.parquet", "rows", "runs"


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
    """Create ``out`` with sweep.yaml, or accept it for resumption if it holds the same spec. A non-empty
    folder that holds no sweep is refused: it may be the user's. (Call with :class:`fsio.DirLock` held.)"""
    out = Path(out)
    norm = yaml.safe_load(yaml.safe_dump(normalise(spec), sort_keys=False))
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise RunDirError(f"--out '{clip(out)}' exists and is not a folder")
    if (out / SPEC_FILE).exists():
        try:
            old = normalise(parse_spec(read_yaml(out / SPEC_FILE, what="sweep spec")))
        except UserError:
            raise RunDirError(f"'{clip(out / SPEC_FILE)}' is damaged; use a new --out") from None
        if (key := _diff_key(old, norm)) is not None:
            raise RunDirError(f"--out '{clip(out)}' holds a different sweep (its {SPEC_FILE} differs at '{key}'); "
                              f"use a new --out, or the same spec to resume")
        if not is_owned(out, "sweep"):  # a sweep of a version before markers
            mark_owned(out, "sweep")
        return out
    out = prepare_owned_dir(out, "sweep", False, [])  # refuses a non-empty folder that is not ours
    atomic_write_text(out / SPEC_FILE, yaml.safe_dump(norm, sort_keys=False))
    return out


def _parts(out: Path) -> list[Path]:
    rows_dir = out / ROWS_DIR
    if not (rows_dir.exists() or rows_dir.is_symlink()):
        return []
    if rows_dir.is_symlink() or not rows_dir.is_dir():
        raise RunDirError(f"'{clip(rows_dir)}' is not a folder; the sweep directory is damaged (move it away and "
                          f"run the sweep again to recompute the missing rows)")
    try:
        found = [(rows_dir / name, os.lstat(rows_dir / name)) for name in os.listdir(rows_dir)
                 if name.endswith(".parquet")]  # lstat: a planted symlink is listed (and refused), not followed
    except OSError as e:
        raise os_error(e, rows_dir, "list") from None
    return [p for p, st in sorted(found, key=lambda x: (x[1].st_mtime_ns, x[0].name))]


def check_table_file(out: Path) -> None:
    """Refuse (one line) a sweep.parquet that is not a regular file: it could never be rewritten."""
    regular_or_absent(out / TABLE_FILE, "use", f", not the sweep table; the sweep directory is damaged (move it "
                      f"away; the rows in {ROWS_DIR}/ are kept)")


def _read_table(p: Path) -> list[dict[str, Any]] | None:
    """The rows of one parquet file; None when it is not a readable table of rows, each with a config_hash
    and a run index: a symlink, a special file, a file whose metadata declares more bytes than the memory
    ceiling (a decompression bomb), or a table of other columns."""
    try:
        if not stat.S_ISREG(os.lstat(p).st_mode):
            return None
        with open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            if declared > memory_ceiling():
                return None
            f.seek(0)
            rows = pq.read_table(f).to_pylist()
    except (OSError, pa.ArrowException, ValueError, TypeError, OverflowError, RecursionError):
        return None
    ok = all(isinstance(r.get("config_hash"), str) and isinstance(r.get("run"), int)
             and not isinstance(r.get("run"), bool) for r in rows)
    return rows if ok else None


def read_rows(out: Path, known: set[str] | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every finished run, from rows/ (oldest part first) and from the last sweep.parquet (which
    may hold the only copy of a row whose part was lost), deduplicated by config_hash (first kept). With
    ``known`` (the spec's config hashes), rows of other configs are left out. Problems (an unreadable part,
    stray rows) go to ``notes``; the runs of an unreadable part are simply not done yet."""
    notes = [] if notes is None else notes
    seen: dict[str, dict[str, Any]] = {}
    sources = [*_parts(out), out / TABLE_FILE]
    for p in sources:
        if p.name == TABLE_FILE and not (p.exists() or p.is_symlink()):
            continue
        rows = _read_table(p)
        if rows is None:
            notes.append(f"'{clip(p)}' is unreadable; ignored (runs found nowhere else are computed again)")
            continue
        stray = 0
        for r in rows:
            if known is not None and r["config_hash"] not in known:
                stray += 1
                continue
            seen.setdefault(r["config_hash"], r)
        if stray and p.name != TABLE_FILE:
            notes.append(f"'{clip(p)}' holds {stray} row(s) of configs not in this sweep's spec; ignored")
    return sorted(seen.values(), key=lambda r: r["run"])


def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> pyarrow Table over the union of their keys (rows of other settings lack some columns). Rows
    whose values for one column cannot share a type (a damaged or planted part) are one RunDirError."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for k in keys:
        try:
            columns[k] = pa.array([r.get(k) for r in rows])
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            raise RunDirError(f"the sweep's rows disagree on the type of column '{clip(k, 40)}'; a part in "
                              f"{ROWS_DIR}/ is damaged (move it away and run the sweep again)") from None
    return pa.table(columns)


def rebuild(out: Path, known: set[str] | None = None, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Rewrite sweep.parquet from rows/ and itself (atomically); returns the rows. It never shrinks: with
    fewer rows than it holds (a part lost meanwhile), it is left as it is."""
    rows = read_rows(out, known, notes)
    old = _read_table(out / TABLE_FILE)
    if old is not None and len(old) > len(rows):
        return rows
    save_parquet(out / TABLE_FILE, table(rows))
    return rows


def write_run_dir_of(out: Path, cfg: RunConfig, arrays: dict[str, np.ndarray], row: dict[str, Any],
                     params: Any = None, watched: dict[str, np.ndarray] | None = None,
                     report: dict[str, Any] | None = None) -> None:
    """runs/<config_hash>/, exactly as ``train`` writes a run directory (with ``params``, the final
    parameters, its params.npz: ``evaluate`` reads them; with ``watched``, the eval: block's rows; ``report``,
    summary.json's engine entry), before the batch's rows are committed, so a kill in between only means the
    batch runs again and rewrites it."""
    path = prepare_run_dir(safe_dir(out, RUNS_DIR) / row["config_hash"], overwrite=True)
    write_config(path, cfg)
    result = TrainResult(from_arrays(arrays), params, row["status"], row["diverged_at"],
                         None if watched is None else from_arrays(watched))
    write_run_dir(path, cfg, result, time.time() - row["wall_time_s"], report)


def load_sweep(out: str | Path):
    """The sweep table as a pandas DataFrame: one row per finished run, in grid order."""
    out = Path(out)
    check_path(out)
    try:
        found = (out / SPEC_FILE).is_file()
    except OSError as e:  # a name too long: pathlib only hides "not there"
        raise os_error(e, out, "open") from None
    if not found:
        raise RunDirError(f"'{clip(out)}' is not a sweep directory (no {SPEC_FILE})")
    rows = read_rows(out)
    known = _known(out)
    if known is not None and any(r["config_hash"] in known for r in rows):  # else: hashed by another version
        rows = [r for r in rows if r["config_hash"] in known]
    return table(rows).to_pandas()


def _known(out: Path) -> set[str] | None:
    """The config hashes of the sweep's spec (rows of other configs, planted in rows/, are not its rows);
    None when the spec cannot be expanded here. A sweep written by a version whose configs hash differently
    matches none of them: load_sweep then keeps every row."""
    from .spec import expand

    try:
        return {r.hash for r in expand(parse_spec(read_yaml(out / SPEC_FILE, what="sweep spec")))}
    except UserError:
        return None
