"""The figures of the reproduction report that show the two main runs: loss and attention curves with their
phases shaded, and attention heatmaps at the phase boundaries. The sweep and finding figures are in
:mod:`figures_sweeps`. Every figure is drawn in the package style (``icl_dynamics.style``) and written in
each requested format."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import style  # noqa: E402
from ..plots import (DOMINANT, phase_legend, plot_feature_loss, plot_heatmaps, plot_own_attention,  # noqa: E402
                     plot_scores, save_formats, shade_phases, step_axis, x_of)
from ..storage import Run  # noqa: E402


def ends_of(phases: dict, group: str, j: int) -> list[int | None]:
    return [f["phases"][j]["end"] for f in phases["features"] if f["group"] == group]


def median_bounds(phases: dict, group: str, n: int) -> list[float | None]:
    out = []
    for j in range(n):
        e = ends_of(phases, group, j)
        out.append(None if not e or any(x is None for x in e) else float(np.median(e)))
    return out


def fig_balanced(run: Run, phases: dict, stem: Path, formats) -> list[Path]:
    with style.context():
        fig, axes = plt.subplots(1, 2, figsize=style.figsize(style.FULL, height=2.7), layout="constrained")
        plot_feature_loss(axes[0], run, run.config.eps)
        plot_own_attention(axes[1], run)
        bounds = median_bounds(phases, "balanced", 2)
        patches = [shade_phases(ax, bounds) for ax in axes][0]
        phase_legend(fig, patches, f"balanced, K = {len(run.probs)}: phases (median boundary over features)")
        return save_formats(fig, stem, formats)


def plot_b_rise(ax, run: Run, k: int) -> None:
    """Mean B_{k,n} over the other minor features, zoomed: its rise is Phase I."""
    t = run.trajectory
    others = [n for n in range(t.scores.shape[1]) if n not in (0, k)]
    ax.plot(x_of(t.steps), t.scores[:, k, others].mean(-1), color="tab:orange", lw=1.2,
            label=f"mean $B_{{{k + 1},n}}$, $n \\notin \\{{1, {k + 1}\\}}$")
    ax.axhline(0, color=style.THEORY, lw=0.6, label="0")
    ax.set_ylabel(f"score (query feature {k + 1}), zoomed")
    step_axis(ax, t.steps[-1])
    ax.legend(loc="lower left")


def fig_imbalanced(run: Run, phases: dict, stem: Path, formats, k: int = 1) -> list[Path]:
    with style.context():
        fig, axes = plt.subplots(1, 3, figsize=style.figsize(style.FULL, height=2.6), layout="constrained")
        plot_feature_loss(axes[0], run, run.config.eps)
        dom = phases["features"][0]["phases"][0]["end"]
        if dom is not None:
            axes[0].axvline(x_of(dom), color=DOMINANT, ls="--", lw=0.8, label="dominant reaches $\\epsilon$")
            axes[0].legend(loc="lower left")
        plot_scores(axes[1], run, k)
        plot_b_rise(axes[2], run, k)
        bounds = [p["end"] for p in phases["features"][k]["phases"]]
        patches = [shade_phases(ax, bounds) for ax in axes][0]
        phase_legend(fig, patches, f"imbalanced, p$_1$ = {run.probs[0]:g}: phases of minor feature {k + 1}")
        return save_formats(fig, stem, formats)


def heatmap_panels(phases: dict, group: str, k: int = 1) -> list[tuple[str, float]]:
    """(title, exact step) of every boundary shown: step 0 and the phase ends."""
    if group == "balanced":
        b = median_bounds(phases, "balanced", 2)
        items = [("start", 0.0), ("end of Phase I", b[0]), ("end of Phase II", b[1])]
    else:
        items = [("start", 0.0), ("dominant reaches $\\epsilon$", phases["features"][0]["phases"][0]["end"])]
        items += [(f"feature {k + 1}: end of Phase {n}", p["end"]) for n, p in
                  zip(style.PHASE_NAMES, phases["features"][k]["phases"])]
    return [(f"{title}\nstep {step:g}", step) for title, step in items if step is not None]


def fig_heatmaps(run: Run, phases: dict, group: str, stem: Path, formats) -> list[Path]:
    panels = heatmap_panels(phases, group)
    ncols = min(3, len(panels))
    rows = -(-len(panels) // ncols)
    with style.context():
        fig = plt.figure(figsize=style.figsize(style.FULL, height=2.15 * rows + 0.1), layout="constrained")
        plot_heatmaps(fig, run.trajectory, panels, ncols)
        return save_formats(fig, stem, formats)
