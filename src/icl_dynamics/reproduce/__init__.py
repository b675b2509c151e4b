"""``reproduce``: the paper's experiments, its claims checked one by one, and a report.

One module per stage: ``experiments`` (the runs, as sweep specs through the sweep machinery) -> ``claims``
(criteria and verdicts) -> ``figures`` -> ``documents`` (report.md, report.html, claims.json,
results.json).

Layout of a reproduce output folder (only these are written, and only these are replaced by --overwrite)::

    report.md, report.html, claims.json, results.json
    figures/balanced.png, imbalanced.png, heatmaps.png, scaling.png
    runs/balanced/, runs/imbalanced/   run directories of the two main runs
"""

from __future__ import annotations

from pathlib import Path

from ..fsio import DirLock
from ..storage import ARTIFACTS, prepare_output_dir
from .documents import FILES, RUNS, write_report
from .experiments import FULL, QUICK, Plan, run_all
from .figures import FIGURES

__all__ = ["FULL", "QUICK", "Plan", "prepare_output", "reproduce", "run_all", "write_report"]


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless ``overwrite``, which removes only the files
    ``reproduce`` writes (see the module doc)."""
    owned = [*FILES, *(f"figures/{n}" for n in FIGURES), *(f"runs/{r}/{n}" for r in RUNS for n in ARTIFACTS)]
    return prepare_output_dir(path, overwrite, owned, "report")  # never empties a folder it did not make


def reproduce(out: str | Path, plan: Plan = FULL, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Run ``plan`` and write the report into ``out``; returns the results (as results.json holds them)."""
    with DirLock(out):
        out = prepare_output(out, overwrite)
        results = run_all(plan, out, progress=progress)
        write_report(out, results)
    return results
