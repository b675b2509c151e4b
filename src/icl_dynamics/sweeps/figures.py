"""Sweep figures: phase-diagram heatmaps over two axes, log-log scaling plots over one axis.

Both average over every other varying column (typically the seeds). A cell or point whose runs include one
with a null value (an event never reached, e.g. ``time_to_eps_minor``) is left out rather than averaged
over the runs that did reach it, which would bias it low.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..fsio import clip, safe_dir, sanitize_name  # noqa: E402
from ..measures import PowerLaw  # noqa: E402,F401  (re-exported)
from ..measures import fit_power_law as _fit  # noqa: E402

# names used in the issue text for the same columns
ALIASES = {"minor_time_to_eps": "time_to_eps_minor", "dominant_time_to_eps": "time_to_eps_dominant"}


def fit_power_law(x, y, level: float = 0.95) -> PowerLaw:
    """:func:`observers.fit_power_law`, with a user-facing error when there is nothing to fit."""
    fit = _fit(x, y, level)
    if fit is None:
        raise UserError("a scaling fit needs positive values at two or more distinct x values")
    return fit


def resolve_column(df: pd.DataFrame, name: str, numeric: bool = False) -> str:
    """``name`` as a column: exact, an alias, or the unique column ending in ``.name``; else UserError."""
    name = ALIASES.get(name, name)
    if name not in df.columns:
        ends = [c for c in df.columns if c.endswith(f".{name}")]
        if len(ends) != 1:
            close = difflib.get_close_matches(name, [str(c) for c in df.columns], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"no column '{name}' in the sweep table{hint}")
        name = ends[0]
    if numeric and not (pd.api.types.is_numeric_dtype(df[name]) and not pd.api.types.is_bool_dtype(df[name])):
        if not (df[name].dtype == object and df[name].map(lambda v: v is None or isinstance(v, (int, float))).all()):
            raise UserError(f"column '{name}' is not numeric")
    return name


def averaged_over(df: pd.DataFrame, axes: list[str], value: str) -> list[str]:
    """The config columns that vary within a point of ``axes`` (averaged over in the figure). A column tied
    to an axis (data.dim to data.num_features) does not vary within a point, so it is not listed."""
    config = [c for c in df.columns if ("." in c or c in ("seed", "eps")) and c not in axes and c != value]
    keyed = df[config].astype(str).groupby([df[a].astype(str) for a in axes])
    return [c for c in config if (keyed[c].nunique() > 1).any()]


def _log_ticks(axis, values) -> None:
    """Tick labels at the swept values, as numbers (not 4x10^0)."""
    axis.set_ticks(values, [f"{v:g}" for v in values])
    axis.set_minor_formatter(NullFormatter())


def _cell_mean(v: pd.Series) -> float:
    v = pd.to_numeric(v, errors="coerce")
    return float(v.mean()) if v.notna().all() else np.nan


def plot_heatmap(df: pd.DataFrame, x: str, y: str, value: str, out: str | Path, user_path: bool = True) -> Path:
    """Mean of ``value`` per (x, y) cell as a heatmap; cells with a never-reached run are blank."""
    grid = df.groupby([y, x])[value].agg(_cell_mean).unstack(x).sort_index().sort_index(axis=1)
    z = grid.to_numpy(np.float64)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * max(grid.shape[1], 4), 1.2 + 0.5 * max(grid.shape[0], 4)))
    finite = z[np.isfinite(z)]
    log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 10
    im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap="viridis",
                   norm=LogNorm() if log else None)
    ax.set_facecolor("0.85")  # masked = never reached
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.columns],
                  rotation=45 if grid.shape[1] > 8 else 0)
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.index])
    settings = df.groupby([y, x])["setting"].agg(lambda v: "/".join(sorted(set(map(str, v))))) \
        .unstack(x).reindex(index=grid.index, columns=grid.columns) if "setting" in df.columns else None
    several = settings is not None and settings.stack().nunique() > 1  # label cells only when settings differ
    if z.size <= 256:
        for (i, j), v in np.ndenumerate(z):
            tag = f"\n{settings.iat[i, j]}" if several and isinstance(settings.iat[i, j], str) else ""
            if np.isfinite(v) or tag:  # dark text on the bright end of viridis
                ax.text(j, i, (f"{v:.3g}" if np.isfinite(v) else "") + tag, ha="center", va="center", fontsize=6,
                        color="k" if np.isfinite(v) and im.norm(v) > 0.6 else "w")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    notes = ([f"mean over {', '.join(rest)}"] if (rest := averaged_over(df, [x, y], value)) else []) + \
        (["grey: not reached / not defined"] if np.isnan(z).any() else [])
    ax.set_title(value + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=9)
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    return _save(fig, out, user_path)


def plot_scaling(df: pd.DataFrame, x: str, value: str, out: str | Path, level: float = 0.95,
                 user_path: bool = True, by: str | None = None, fit: bool = True) -> tuple[Path, dict[str, PowerLaw]]:
    """``value`` against ``x`` on log-log axes: every run, the mean per x and (``fit``) a fitted power law;
    with ``by``, one series (and one fit) per value of that column instead of pooling them."""
    xs = pd.to_numeric(df[x], errors="coerce").to_numpy(np.float64)
    ys = pd.to_numeric(df[value], errors="coerce").to_numpy(np.float64)
    if np.any(np.isfinite(xs) & (xs <= 0)):
        raise UserError(f"a log-log plot needs {x} > 0")
    ok = np.isfinite(xs) & np.isfinite(ys) & (ys > 0)
    if not ok.any():
        raise UserError(f"no run has a positive '{value}' to plot")
    series = [(None, np.ones(len(df), bool))] if by is None else \
        [(v, (df[by] == v).to_numpy()) for v in sorted(df[by].dropna().unique(), key=str)]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    fits: dict[str, PowerLaw] = {}
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(series))) if by else ["tab:blue"]
    for (label, mask), color in zip(series, colors):
        m = ok & mask
        if not m.any():
            continue
        name = "runs" if by is None else f"{by} = {label:g}" if isinstance(label, float) else f"{by} = {label}"
        ux = np.unique(xs[m])
        ax.scatter(xs[m], ys[m], s=10, alpha=0.35, color=color)
        ax.plot(ux, [ys[m][xs[m] == u].mean() for u in ux], "o-" if by else "o", color=color, ms=5,
                lw=1, label=f"{name} (mean per x)")
        if fit:
            f = fit_power_law(xs[m], ys[m], level) if len(ux) >= 2 else None
            if f is not None:
                fits[str(label) if by else "all"] = f
                grid = np.geomspace(ux.min(), ux.max(), 100)
                ax.plot(grid, f.prefactor * grid ** f.exponent, "--", color="k" if by is None else color, lw=1,
                        label=f"fit: exponent {f.exponent:.3g} [{f.lo:.3g}, {f.hi:.3g}] ({f.level:.0%} CI)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ux_all = np.unique(xs[ok])
    if len(ux_all) <= 12:
        _log_ticks(ax.xaxis, ux_all)
    ax.set_xlabel(x)
    ax.set_ylabel(value)
    dropped = int((~ok).sum())
    rest = [c for c in averaged_over(df, [x], value) if c != by]
    notes = ([f"pooled over {', '.join(rest)}"] if rest else []) + ([f"{dropped} runs not reached/<=0 left out"]
                                                                  if dropped else [])
    ax.set_title(f"{value} vs {x}" + (f"\n({'; '.join(notes)})" if notes else ""), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, user_path), fits


def _save(fig, out: str | Path, user_path: bool) -> Path:
    """PNG bytes, written atomically to a regular file only (never through a device, FIFO or a planted
    symlink: fsio.atomic_write_bytes)."""
    import io

    from ..fsio import atomic_write_bytes

    if Path(out).is_dir():
        plt.close(fig)
        raise UserError(f"--out '{clip(out)}' is a directory; give a .png path")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue(), user_path=user_path)
    return Path(out)


def plot_sweep(sweep_dir: str | Path, x: str, value: str, y: str | None = None,
               out: str | Path | None = None, by: str | None = None, fit: bool = True) -> tuple[Path, dict[str, PowerLaw]]:
    """The heatmap (with ``y``) or the scaling plot (without) of a sweep directory."""
    from .store import load_sweep

    df = load_sweep(sweep_dir)
    if df.empty:
        raise UserError(f"sweep '{sweep_dir}' has no finished runs yet")
    x = resolve_column(df, x)
    value = resolve_column(df, value, numeric=True)
    if y is not None:
        y = resolve_column(df, y)
        if y == x:
            raise UserError("--x and --y must be different columns")
        if by is not None:
            raise UserError("--by splits the lines of a scaling plot; a heatmap (--y) shows two columns already")
    if by is not None:
        by = resolve_column(df, by)
        if by == x:
            raise UserError("--x and --by must be different columns")
    name = sanitize_name(f"{value}_vs_{x}" + (f"_{y}" if y else "") + (f"_by_{by}" if by else "")) + ".png"
    user_path = out is not None
    out = Path(out) if user_path else safe_dir(sweep_dir, "figures") / name
    if y is not None:
        return plot_heatmap(df, x, y, value, out, user_path), {}
    xs = df[x]
    if not pd.api.types.is_numeric_dtype(xs) or pd.api.types.is_bool_dtype(xs):
        raise UserError(f"--x column '{x}' is not numeric; a scaling plot needs a numeric axis")
    return plot_scaling(df, x, value, out, user_path=user_path, by=by, fit=fit)
