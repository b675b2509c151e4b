"""``reproduce``: the paper's experiments, its claims checked one by one with negative controls, two
findings beyond the paper, and a report.

One module per stage: ``experiments`` (main runs and sweeps, through the sweep machinery in ``machinery``),
``controls`` and ``findings`` (their own runs) -> ``registry`` with ``claims`` and ``findings`` (each claim a
registered check with its source, criterion and controls; ``orders`` tests exponents) -> ``figures`` and
``figures_sweeps`` -> ``documents`` (report.md, report.html, claims.json, results.json).

Layout of a reproduce output folder (only these are written, and only these are replaced by --overwrite)::

    report.md, report.html, claims.json, results.json
    figures/<name>.png (always) and .pdf/.svg (--format), for the names in documents.FIGURES
    runs/balanced/, runs/imbalanced/   run directories of the two main runs
"""

from __future__ import annotations

from pathlib import Path

from ..fsio import DirLock
from ..storage import ARTIFACTS, prepare_output_dir
from . import claims, findings  # noqa: F401  (registers the checks)
from .documents import FIGURE_FILES, FIGURES, FILES, RUNS, write_report
from .experiments import FULL, QUICK, Plan, run_all
from .registry import CLAIMS, ClaimResult, Control, evaluate, register

__all__ = ["CLAIMS", "FIGURES", "FILES", "FULL", "QUICK", "ClaimResult", "Control", "Plan", "evaluate",
           "prepare_output", "register", "reproduce", "run_all", "write_report"]


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless ``overwrite``, which removes only the files
    ``reproduce`` writes (see the module doc)."""
    owned = [*FILES, *(f"figures/{n}" for n in FIGURE_FILES), *(f"runs/{r}/{n}" for r in RUNS for n in ARTIFACTS)]
    return prepare_output_dir(path, overwrite, owned, "report")


def reproduce(out: str | Path, plan: Plan = FULL, *, overwrite: bool = False, progress: bool = True,
              formats=("png",)) -> dict:
    """Run ``plan`` and write the report into ``out`` (figures in ``formats``, PNG always); returns the
    results."""
    from ..plots import check_formats

    formats = check_formats(formats)  # a bad format fails before anything runs
    with DirLock(out):  # one writer per report folder
        out = prepare_output(out, overwrite)
        results = run_all(plan, out, progress=progress)
        write_report(out, results, formats)
    return results
