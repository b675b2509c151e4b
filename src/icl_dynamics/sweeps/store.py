"""Sweep directories: the only code that reads and writes them.

    sweep.yaml             the normalised spec; a different spec in the same folder is refused
    rows/<batch>.parquet   the rows of one finished batch, written atomically (the source of truth)
    sweep.parquet          all rows, deduplicated by config_hash, rebuilt atomically from rows/
    runs/<config_hash>/    a run directory per run, only with ``keep_trajectories: true``
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..config import RunConfig, read_yaml
from ..errors import RunDirError, UserError
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
    atomic_write_text(out / SPEC_FILE, yaml.safe_dump(norm, sort_keys=False))  # first: it marks the folder
    return out


def read_rows(out: Path) -> list[dict[str, Any]]:
    """Rows of every finished batch, oldest part first, deduplicated by config_hash (first kept)."""
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


def table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> pyarrow Table over the union of their keys (rows of other settings lack some columns)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({k: [r.get(k) for r in rows] for k in keys})


def rebuild(out: Path) -> list[dict[str, Any]]:
    """Rewrite sweep.parquet from rows/ (atomically); returns the rows."""
    rows = read_rows(out)
    save_parquet(out / TABLE_FILE, table(rows))
    return rows


def write_run_dir_of(out: Path, cfg: RunConfig, arrays: dict[str, np.ndarray], row: dict[str, Any]) -> None:
    """runs/<config_hash>/, exactly as ``train`` writes a run directory, before the batch's rows are
    committed, so a kill in between only means the batch runs again and rewrites it."""
    path = prepare_run_dir(out / RUNS_DIR / row["config_hash"], overwrite=True)
    write_config(path, cfg)
    result = TrainResult(from_arrays(arrays), None, row["status"], row["diverged_at"])
    write_run_dir(path, cfg, result, time.time() - row["wall_time_s"])


def load_sweep(out: str | Path):
    """The sweep table as a pandas DataFrame: one row per finished run, in grid order."""
    out = Path(out)
    if not (out / SPEC_FILE).is_file():
        raise RunDirError(f"'{out}' is not a sweep directory (no {SPEC_FILE})")
    if not (out / ROWS_DIR).is_dir():
        return table([]).to_pandas()
    return table(read_rows(out)).to_pandas()

