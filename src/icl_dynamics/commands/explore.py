"""``explore RUN_DIR|SWEEP_DIR``: one self-contained interactive HTML page (plotly, works offline)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def configure(p):
    p.add_argument("path", help="a run directory (from 'train') or a sweep directory (from 'sweep')")
    p.add_argument("--out", help="the HTML file to write (default: explore.html inside PATH)")
    p.add_argument("--x", help="sweeps: the column across (default data.num_features, or the first grid axis)")
    p.add_argument("--y", help="sweeps: the column down; without it, a log-log plot against --x")
    p.add_argument("--value", default="time_to_eps_minor", help="sweeps: the column shown (default "
                   "time_to_eps_minor)")


def sweep_page(sweep_dir: Path, x: str | None, y: str | None, value: str, out: str | Path | None) -> Path:
    """The sweep explorer of ``sweep_dir``; kept runs (keep_trajectories) are embedded for the click view."""
    from ..api import run_data
    from ..config import read_yaml
    from ..explorer_sweep import write_sweep_explorer
    from ..storage import load_run
    from ..sweeps.figures import resolve_column
    from ..sweeps.store import RUNS_DIR, SPEC_FILE, load_sweep

    df = load_sweep(sweep_dir)
    if df.empty:
        raise UserError(f"sweep '{sweep_dir}' has no finished runs yet")
    if x is None:
        grid = list(read_yaml(sweep_dir / SPEC_FILE, what="sweep spec").get("grid") or {})
        x = "data.num_features" if "data.num_features" in grid or not grid else grid[0]
    x = resolve_column(df, x)
    y = resolve_column(df, y) if y else None
    value = resolve_column(df, value, numeric=True)
    runs = {}
    if (sweep_dir / RUNS_DIR).is_dir():
        for h in df["config_hash"]:
            if (sweep_dir / RUNS_DIR / h / "trajectory.npz").is_file():
                runs[h] = run_data(load_run(sweep_dir / RUNS_DIR / h))
    return write_sweep_explorer(df, out or sweep_dir / "explore.html", x, y, value, runs)


def run(args) -> int:
    from ..api import Run
    from ..sweeps.store import SPEC_FILE

    from ..storage import check_run_dir

    path = check_run_dir(Path(args.path))  # one line for a missing, odd or unreadable path
    if (path / SPEC_FILE).is_file():
        out = sweep_page(path, args.x, args.y, args.value, args.out)
    else:
        if args.x or args.y:
            raise UserError("--x and --y are for sweep directories; a run page shows every feature")
        out = Run(path).explore(args.out)
    print(out)
    return 0
