"""The benchmark suite: ``python benchmarks/run.py [--quick] [--out PATH]`` (``make bench``).

Every comparison is a ratio of two implementations timed in the same run, after a warm-up (compile time
excluded and reported separately), as a median over repeats. Writes benchmarks/results.json (device and
machine included) and prints a table. docs/performance.md explains the numbers. torch is optional: without
it the PyTorch comparison is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from icl_dynamics.progress import progress_bar  # noqa: E402
from icl_dynamics.storage import atomic_write_json  # noqa: E402


@dataclass(frozen=True)
class Plan:
    repeats: int = 7
    fp_steps: int = 200
    default_steps: int = 2000
    acc_steps: int = 2000
    acc_log_every: int = 25
    acc_pop_samples: tuple = (1024, 4096)
    acc_batches: tuple = (4, 16, 64)
    acc_time_batches: tuple = (256,)
    acc_fit_min_batch: int = 16
    acc_seeds: int = 2
    acc_eval_samples: int = 65536
    acc_eval_prompts: int = 16
    peer_batch: int = 256
    peer_literal_repeats: int = 3
    growth_N: tuple = (64, 256, 1024, 4096)
    growth_d: tuple = (16, 64, 256)
    growth_K: tuple = (4, 8, 16, 32, 64)
    growth_tok_batch: int = 64
    growth_tok_N: tuple = (64, 256, 1024)
    growth_tok_B: tuple = (16, 64, 256)
    sweep_configs: int = 256
    sweep_steps: int = 2000
    sweep_mc_configs: int = 16
    sweep_mc_steps: int = 200


QUICK = Plan(repeats=3, fp_steps=20, default_steps=100, acc_steps=100, acc_log_every=20, acc_pop_samples=(512,),
             acc_batches=(4, 16), acc_time_batches=(), acc_fit_min_batch=4, acc_seeds=1, acc_eval_samples=1024,
             peer_batch=16, peer_literal_repeats=2, growth_N=(64, 256), growth_d=(16, 32), growth_K=(4, 8),
             growth_tok_batch=16, growth_tok_N=(64, 128), growth_tok_B=(8, 16), sweep_configs=4, sweep_steps=50,
             sweep_mc_configs=4, sweep_mc_steps=20)


def sections(plan: Plan):
    import accuracy
    import fastpaths
    import growth
    import peer_bench
    import sweep_bench

    return {
        "fast_paths": lambda: {
            "recompilation": fastpaths.recompilation(plan.fp_steps),
            "count_samples": fastpaths.samples_once(),
            "host_round_trips": fastpaths.host_round_trips(plan.default_steps),
            "population_matrix_path": fastpaths.population_matrix_path(plan.repeats, 4096),
            "default_population_run": fastpaths.default_run(max(1, plan.repeats // 3), plan.default_steps),
        },
        "population_vs_tokens": lambda: accuracy.run(plan),
        "tokens_vs_torch": lambda: peer_bench.run(plan),
        "cost_growth": lambda: growth.run(plan),
        "sweep": lambda: sweep_bench.run(plan),
    }


def comparisons(res: dict) -> list[dict]:
    """The headline rows: ours, the other, the ratio, the goal."""
    rows = []

    def add(name, ours, other, goal=None, note=""):
        ratio = other / ours
        rows.append({"name": name, "ours_s": ours, "other_s": other, "ratio": ratio, "goal": goal,
                     "met": None if goal is None else ratio >= goal, "note": note})

    fp = res["fast_paths"]["population_matrix_path"]
    add("population step: matrix path vs autodiff (K=16, M=4096)", fp["update_matrix"]["median_s"],
        fp["update_autodiff"]["median_s"])
    acc = res["population_vs_tokens"]
    pc, tc = acc["population_choice"], acc["tokens_choice"]
    add(f"population vs tokens at <=1% error ({acc['steps']} steps)", pc["run_s"], tc["run_s"], 1000,
        f"M={pc['M']:.0f}{' (fit)' if pc['extrapolated'] else ''}, B={tc['B']:.0f}"
        + (" (fit; tokens time extrapolated)" if tc["extrapolated"] else ""))
    tv = res["tokens_vs_torch"]
    if "skipped" not in tv:
        add(f"tokens vs torch, query column, full step (B={tv['batch']})", tv["ours_step"]["median_s"],
            tv["torch_restricted_step_s"], 3, "each samples its own batch")
        add("tokens vs torch, query column, compute only (same batch)", tv["ours_compute"]["median_s"],
            tv["torch_restricted_compute_s"], None, "forward + backward + update")
        add("tokens vs torch, literal full attention matrix, full step", tv["ours_step"]["median_s"],
            tv["torch_literal_step_s"], None, "O(B N^2 d) peer")
    for key, goal in (("mean_field", 20), ("monte_carlo", None)):
        sw = res["sweep"][key]
        add(f"sweep {sw['configs']} configs x {sw['steps']} steps, {key}: vmapped vs sequential",
            sw["vmapped_s"], sw["sequential_s"], goal, f"results agree to {sw['max_abs_loss_diff']:.1e}")
    return rows


def show(res: dict, console: Console) -> None:
    t = Table(title="icl-dynamics benchmarks (ratio = other / ours; median of repeats, compile excluded)")
    for col in ("comparison", "ours", "other", "ratio", "goal", "met", "note"):
        t.add_column(col, justify="right" if col in ("ours", "other", "ratio", "goal") else "left")
    for r in res["comparisons"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        t.add_row(r["name"], f"{r['ours_s']:.3g} s", f"{r['other_s']:.3g} s", f"{r['ratio']:.3g}x",
                  "" if r["goal"] is None else f">= {r['goal']}x", met, r["note"])
    console.print(t)
    g = Table(title="cost growth of one step (time ~ param^exponent)")
    for col in ("series", "values", "step times", "exponent"):
        g.add_column(col)
    for s in res["cost_growth"]["population"] + res["cost_growth"]["tokens"]:
        g.add_row(s["name"], ", ".join(map(str, s["values"])), ", ".join(f"{x * 1e3:.3g}" for x in s["step_s"])
                  + " ms", f"{s['exponent']:+.2f}")
    console.print(g)


def markdown(res: dict) -> str:
    """The two tables of ``show`` as markdown (docs/performance.md pastes them)."""
    lines = ["| comparison | ours | other | ratio | goal | met | note |", "|---|---|---|---|---|---|---|"]
    for r in comparisons(res):
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        goal = "" if r["goal"] is None else f">= {r['goal']}x"
        lines.append(f"| {r['name']} | {r['ours_s']:.3g} s | {r['other_s']:.3g} s | {r['ratio']:.3g}x | {goal} "
                     f"| {met} | {r['note']} |")
    lines += ["", "| series | values | step time (ms) | exponent |", "|---|---|---|---|"]
    for s in res["cost_growth"]["population"] + res["cost_growth"]["tokens"]:
        lines.append(f"| {s['name']} | {', '.join(map(str, s['values']))} | "
                     f"{', '.join(f'{x * 1e3:.3g}' for x in s['step_s'])} | {s['exponent']:+.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section (~1 min)")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results.json; "
                                                "benchmarks/results_quick.json with --quick)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections (for development)")
    ap.add_argument("--markdown", metavar="RESULTS", help="print the tables of an existing results file as "
                                                           "markdown and exit (no benchmarking)")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    plan = QUICK if args.quick else Plan()
    here = Path(__file__).resolve().parent
    out = Path(args.out) if args.out else here / ("results_quick.json" if args.quick else "results.json")
    started = time.time()
    res: dict = {"meta": {"command": "python benchmarks/run.py" + (" --quick" if args.quick else ""),
                          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                          "plan": asdict(plan), "machine": machine()}}
    todo = sections(plan)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only}
    with progress_bar(True) as bar:
        task = bar.add_task("benchmarks", total=len(todo))
        for name, fn in todo.items():
            bar.update(task, description=f"benchmarks: {name}")
            t0 = time.perf_counter()
            res[name] = fn()
            res[name]["section_wall_s"] = time.perf_counter() - t0
            bar.advance(task)
    res["meta"]["wall_s"] = time.time() - started
    res["meta"]["machine"]["load_avg_end"] = list(os.getloadavg())
    if not args.only:
        res["comparisons"] = comparisons(res)
    atomic_write_json(out, res)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if not args.only:
        show(res, console)
    console.print(f"wrote {out} in {res['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
