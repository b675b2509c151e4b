"""The tables of docs/performance.md, generated from a results file:
``python -m benchmarks.report [RESULTS] [--check]``.

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results -->`` in the docs; everything outside
the markers is prose and is left alone. ``run`` calls :func:`update_docs` after a full run, and
tests/test_benchmarks.py checks that the committed docs equal what this module makes of the committed
benchmarks/results.json, so a hand edit or a stale table fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from icl_dynamics.storage import atomic_write_text

from . import fastpaths
from .common import sec, table, times
from .run import SECTIONS

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
DOCS = HERE.parent / "docs" / "performance.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(\n<!-- /results -->)", re.S)


def _done(res: dict) -> dict:
    """The sections present in ``res``, in the suite's order."""
    return {name: mod for name, mod in SECTIONS.items() if name in res}


def comparisons(res: dict) -> list[dict]:
    """The headline rows of every section present: ours, the other, the ratio, the goal."""
    return [row for name, mod in _done(res).items() for row in mod.comparisons(res[name])]


def _met(met) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def _run_table(meta: dict) -> str:
    m = meta["machine"]
    torch = f"{m['torch']} ({m.get('torch_threads')} threads)" if m.get("torch") else "not installed"
    rows = [["command", f"`{meta['command']}`"], ["started (UTC)", meta["started_utc"]],
            ["wall time", f"{meta['wall_s']:.0f} s"],
            ["load average (1 min) at start, end", f"{m['load_avg_start'][0]:.1f}, {m['load_avg_end'][0]:.1f}"],
            ["JAX devices", ", ".join(m["jax_devices"]) + f" ({m['jax_backend']})"],
            ["CPU", f"{m['cpu_count']} x {m.get('cpu_model', m['processor'])}"],
            ["versions", f"python {m['python']}, jax {m['jax']}, numpy {m['numpy']}, torch {torch}"]]
    return table(["run", "value"], rows)


def blocks(res: dict) -> dict[str, str]:
    """Every generated table, by marker name."""
    rows = comparisons(res)
    out = {"run": _run_table(res["meta"]),
           "comparisons": table(["comparison", "ours", "other", "ratio", "goal", "met", "note"],
                                [[r["name"], sec(r["ours_s"]), sec(r["other_s"]), times(r["ratio"]),
                                  "" if r["goal"] is None else f">= {r['goal']}x", _met(r["met"]), r["note"]]
                                 for r in rows])}
    goals = [[f"{r['name']}: >= {r['goal']}x", times(r["ratio"]), _met(r["met"])] for r in rows
             if r["goal"] is not None]
    if fastpaths.NAME in res:
        goals.append(["fast paths: one jitted scan, few host trips, no recompilation, count samples once",
                      "see the fast-paths table", _met(fastpaths.all_checked(res[fastpaths.NAME]))])
    for name, mod in _done(res).items():  # a section's goals that are not a ratio of two times
        if hasattr(mod, "goals"):
            goals += [[g["goal"], g["measured"], _met(g["met"])] for g in mod.goals(res[name])]
    out["goals"] = table(["goal", "measured", "met"], goals)
    for name, mod in _done(res).items():
        out.update(mod.tables(res[name]))
    return out


def markdown(res: dict) -> str:
    """All generated tables, one after another (for a quick look at a results file)."""
    return "\n\n".join(f"### {name}\n\n{body}" for name, body in blocks(res).items())


def rewrite(text: str, res: dict) -> tuple[str, list[str], list[str]]:
    """``text`` with every marked table regenerated from ``res``; also the names of generated tables with no
    marker in ``text`` and of markers with no generated table (those keep their old content)."""
    made, seen, unknown = blocks(res), [], []

    def fill(m: re.Match) -> str:
        name = m["name"]
        seen.append(name)
        if name not in made:
            unknown.append(name)
            return m[0]
        return m[1] + "\n" + made[name] + "\n" + m[4]  # blank lines: markdown renders the table

    new = BLOCK.sub(fill, text)
    return new, [n for n in made if n not in seen], unknown


def update_docs(res: dict, docs: Path = DOCS) -> list[str]:
    """Rewrite the tables of ``docs`` from ``res``; returns warnings (unmarked or unknown tables)."""
    text = docs.read_text()
    new, unmarked, unknown = rewrite(text, res)
    if new != text:
        atomic_write_text(docs, new)
    return [f"no marker in {docs.name} for table '{n}'" for n in unmarked] + \
           [f"{docs.name} marks table '{n}', which {RESULTS.name} does not produce" for n in unknown]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=str(RESULTS), help="results file (default: %(default)s)")
    ap.add_argument("--docs", default=str(DOCS), help="the markdown file to update (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if the docs' tables are stale")
    ap.add_argument("--print", action="store_true", help="print every table as markdown; change nothing")
    args = ap.parse_args(argv)
    res = json.loads(Path(args.results).read_text())
    if args.print:
        print(markdown(res))
        return 0
    docs = Path(args.docs)
    if args.check:
        text = docs.read_text()
        new, unmarked, unknown = rewrite(text, res)
        stale = new != text or unmarked or unknown
        print(f"{docs}: " + ("stale tables" if stale else "tables up to date"), file=sys.stderr)
        return 1 if stale else 0
    for w in update_docs(res, docs):
        print("warning:", w, file=sys.stderr)
    print(f"updated the tables of {docs} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
