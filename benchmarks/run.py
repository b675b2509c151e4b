"""The benchmark suite: ``python -m benchmarks.run [--quick] [--out PATH] [--only SECTION ...]`` (``make bench``).

Every comparison is a ratio of two implementations timed in the same run, after a warm-up (compile time
excluded and reported separately), as a median over repeats. Each section is one module with its own knobs
(``FULL``, ``QUICK``); this file lists them, writes benchmarks/results.json (machine and device included),
prints the headline table and, after a full run, regenerates the tables of docs/performance.md
(benchmarks/report.py). torch is optional: without it the PyTorch comparison is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from icl_dynamics.progress import progress_bar
from icl_dynamics.storage import atomic_write_json

from . import accuracy, exact, fastpaths, growth, peer_bench, sweep_bench, transformer_peer
from .common import machine

# in this order: later sections reuse code the earlier ones compiled (the default population engine); exact
# reuses accuracy's tokens fit and clears JAX's caches to time compilations, so it comes last
SECTIONS = {m.NAME: m for m in (fastpaths, accuracy, peer_bench, transformer_peer, growth, sweep_bench, exact)}
RESULTS = Path(__file__).resolve().parent / "results.json"


def show(rows: list[dict], console: Console) -> None:
    t = Table(title="icl-dynamics benchmarks (ratio = other / ours; median of repeats, compile excluded)")
    for col in ("comparison", "ours", "other", "ratio", "goal", "met", "note"):
        t.add_column(col, justify="right" if col in ("ours", "other", "ratio", "goal") else "left")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        t.add_row(r["name"], f"{r['ours_s']:.3g} s", f"{r['other_s']:.3g} s", f"{r['ratio']:.3g}x",
                  "" if r["goal"] is None else f">= {r['goal']}x", met, r["note"])
    console.print(t)


def _merged(old: dict, new: dict, names: list[str]) -> dict:
    """``old`` with the sections ``names`` taken from ``new``, each recording the run it came from."""
    meta = new["meta"]
    for name in names:
        old[name] = {**new[name], "run": {"command": f"python -m benchmarks.run --only {name} --merge",
                                          "started_utc": meta["started_utc"], "wall_s": meta["wall_s"],
                                          "load_avg": [meta["machine"]["load_avg_start"][0],
                                                       meta["machine"]["load_avg_end"][0]],
                                          "note": "run on its own and merged into this file; the other "
                                                  "sections are from the run in meta"}}
        old["meta"]["knobs"][name] = meta["knobs"][name]
    return old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section (~1 min)")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results.json; "
                                                "benchmarks/results_quick.json with --quick)")
    ap.add_argument("--only", nargs="+", default=None, choices=list(SECTIONS), metavar="SECTION",
                    help=f"run only these sections (for development): {', '.join(SECTIONS)}")
    ap.add_argument("--merge", action="store_true", help="with --only: replace those sections in the existing "
                                                          "results file (each noted as run on its own) and "
                                                          "regenerate the docs' tables from it")
    ap.add_argument("--markdown", metavar="RESULTS", help="print the tables of an existing results file as "
                                                           "markdown and exit (no benchmarking)")
    args = ap.parse_args(argv)
    from . import report  # report imports this module's SECTIONS

    if args.markdown:
        print(report.markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    out = Path(args.out) if args.out else RESULTS.with_name("results_quick.json" if args.quick else "results.json")
    if args.merge and not (args.only and out.is_file()):
        ap.error("--merge needs --only and an existing results file to merge into")
    todo = {name: mod for name, mod in SECTIONS.items() if not args.only or name in args.only}
    knobs = {name: mod.QUICK if args.quick else mod.FULL for name, mod in todo.items()}
    started = time.time()
    res: dict = {"meta": {"command": "python -m benchmarks.run" + (" --quick" if args.quick else ""),
                          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                          "knobs": {name: asdict(k) for name, k in knobs.items()}, "machine": machine()}}
    with progress_bar(True) as bar:
        task = bar.add_task("benchmarks", total=len(todo))
        for name, mod in todo.items():
            bar.update(task, description=f"benchmarks: {name}")
            t0 = time.perf_counter()
            res[name] = mod.run(knobs[name])
            res[name]["section_wall_s"] = time.perf_counter() - t0
            bar.advance(task)
    wall = res["meta"]["wall_s"] = time.time() - started
    res["meta"]["machine"]["load_avg_end"] = list(os.getloadavg())
    if args.merge:
        res = _merged(json.loads(out.read_text()), res, args.only)
    res["comparisons"] = report.comparisons(res)
    atomic_write_json(out, res)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    show(res["comparisons"], console)
    console.print(f"wrote {out} in {wall:.0f} s" + (f" (merged: {', '.join(args.only)})" if args.merge else ""))
    if not args.quick and (args.merge or not args.only) and out.resolve() == RESULTS:
        for w in report.update_docs(res):
            console.print(f"warning: {w}")
        console.print(f"regenerated the tables of {report.DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
