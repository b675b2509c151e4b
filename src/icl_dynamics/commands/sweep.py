"""CLI: ``sweep SPEC --out DIR`` and ``plot-sweep DIR --x KEY [--y KEY] --value NAME`` (docs/sweeps.md)."""

from __future__ import annotations

import argparse

from ..errors import UserError


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def configure_sweep(p):
    p.add_argument("spec", help="sweep YAML: base, grid, and optional seeds, keep_trajectories, max_batch")
    p.add_argument("--out", required=True, help="sweep directory (an existing one with the same spec resumes)")
    p.add_argument("--cluster", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=_positive, metavar="N",
                   help="local worker processes (default: CPU count; 1 runs in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def sweep(args) -> int:
    from ..sweeps import TABLE_FILE, run_sweep

    if args.cluster is not None and args.workers is not None:
        raise UserError("--workers is for local runs; a --cluster brings its own workers")
    df = run_sweep(args.spec, args.out, cluster=args.cluster, workers=args.workers, progress=not args.quiet)
    s = df.attrs["sweep"]
    where = (f"Dask cluster {s['cluster']}" if s["cluster"] else
             "this process" if s["workers"] <= 1 else f"{s['workers']} local worker processes")
    print(f"done: {s['runs']} runs ({s['computed']} computed in {s['batches']} batches on {where}, "
          f"{s['skipped']} already done) in {s['wall_time_s']:.1f} s; "
          + (f"{s['diverged']} diverged; " if s["diverged"] else "") + f"table {args.out}/{TABLE_FILE}")
    return 0


def configure_plot_sweep(p):
    p.add_argument("sweep_dir", help="a sweep directory written by 'sweep'")
    p.add_argument("--x", required=True, help="column for the x axis, e.g. data.num_features")
    p.add_argument("--y", help="column for the y axis: draws a heatmap (without it, a log-log scaling plot)")
    p.add_argument("--value", required=True, help="derived column to show, e.g. time_to_eps_minor")
    p.add_argument("--out", help="PNG path (default SWEEP_DIR/figures/VALUE_vs_X[_Y].png)")
    p.add_argument("--by", help="scaling plot: one series and one fit per value of this column (e.g. "
                   "data.dominant_prob) instead of pooling them")
    p.add_argument("--no-fit", action="store_true", help="scaling plot: draw the points without a power-law fit")


def plot_sweep(args) -> int:
    from ..sweeps.figures import plot_sweep as draw

    path, fits = draw(args.sweep_dir, args.x, args.value, args.y, args.out, by=args.by, fit=not args.no_fit)
    for label, fit in fits.items():
        print(("" if label == "all" else f"{args.by} = {label}: ") + f"exponent {fit.exponent:.4g} "
              f"({fit.level:.0%} CI {fit.lo:.4g} to {fit.hi:.4g}), prefactor {fit.prefactor:.4g}, {fit.n} runs")
    print(path)
    return 0
