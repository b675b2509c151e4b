"""The figures of the reproduction report (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from ..plots import DOMINANT, MINOR, plot_feature_loss, plot_own_attention, plot_scores, save  # noqa: E402
from ..storage import Run  # noqa: E402
from .claims import ends_of  # noqa: E402

FIGURES = ("balanced.png", "imbalanced.png", "heatmaps.png", "scaling.png")
PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def _shade(ax, bounds: list[int | None], names=("I", "II", "III", "IV")) -> None:
    start = 0
    for j, end in enumerate(bounds):
        if end is None:
            break
        ax.axvspan(start, end, color=PHASE_COLORS[j], alpha=0.10, lw=0, label=f"Phase {names[j]}")
        start = end


def _median_bounds(phases: dict, group: str, n: int) -> list[int | None]:
    out = []
    for j in range(n):
        e = ends_of(phases, group, j)
        out.append(None if any(x is None for x in e) else int(np.median(e)))
    return out


def fig_balanced(run: Run, phases: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_feature_loss(axes[0], run, run.config.eps)
    plot_own_attention(axes[1], run)
    bounds = _median_bounds(phases, "balanced", 2)
    for ax in axes:
        _shade(ax, bounds)
        ax.legend(fontsize=8)
    fig.suptitle(f"Balanced, K = {len(run.probs)}: phases shaded at the median boundaries over features")
    return save(fig, path)


def fig_imbalanced(run: Run, phases: dict, path: Path, k: int = 1) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_feature_loss(axes[0], run, run.config.eps)
    dom = phases["features"][0]["phases"][0]["end"]
    if dom is not None:
        axes[0].axvline(dom, color=DOMINANT, ls="--", lw=1)
    plot_scores(axes[1], run, k)
    ends = [p["end"] for p in phases["features"][k]["phases"]]
    for j, end in enumerate(ends):
        if end is not None:
            axes[1].axvline(end, color=PHASE_COLORS[j], ls="--", lw=1.2,
                            label=f"end of Phase {('I', 'II', 'III', 'IV')[j]}")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Imbalanced: dominant vs minor loss; scores of minor feature {k + 1} with its phase ends")
    return save(fig, path)


def fig_heatmaps(runs: dict[str, Run], phases: dict[str, dict], path: Path, k: int = 1) -> Path:
    pb, pi = phases["balanced"], phases["imbalanced"]
    b = _median_bounds(pb, "balanced", 2)
    rows = {"balanced": [("step 0", 0), ("end of I", b[0]), ("end of II", b[1])],
            "imbalanced": [("step 0", 0), ("dominant end", pi["features"][0]["phases"][0]["end"])]
            + [(f"feature {k + 1}: end of {n}", p["end"]) for n, p in zip(("I", "II", "III", "IV"),
                                                                          pi["features"][k]["phases"])]}
    ncol = max(len(r) for r in rows.values())
    fig = plt.figure(figsize=(2.3 * ncol + 1, 5.2))
    subs = fig.subfigures(2, 1)
    for sub, (name, items) in zip(subs, rows.items()):
        t = runs[name].trajectory
        axes = sub.subplots(1, ncol, squeeze=False)[0]
        im = None
        for ax, (label, step) in zip(axes, items):
            if step is None:
                ax.set_title(f"{label}: not reached", fontsize=8)
                ax.axis("off")
                continue
            i = int(np.argmin(np.abs(t.steps - step)))
            im = ax.imshow(t.attention[i], vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"{label}\n(step {int(t.steps[i])})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[len(items):]:
            ax.axis("off")
        axes[0].set_ylabel("query feature")
        sub.suptitle(f"{name}: attention[query feature, key feature]", fontsize=10)
        if im is not None:
            sub.colorbar(im, ax=list(axes), shrink=0.8)
    return save(fig, path)


def _loglog(ax, x, ys: dict[str, tuple[list, dict | None, str]], xlabel: str, title: str) -> None:
    for label, (y, fit, color) in ys.items():
        y = np.array([np.nan if v is None else v for v in y], np.float64)
        ax.plot(x, y, "o", color=color, ms=5)
        if fit is not None:
            xx = np.geomspace(min(x), max(x), 50)
            ax.plot(xx, fit["prefactor"] * xx ** fit["exponent"], "-", color=color, lw=1.2,
                    label=f"{label}: exponent {fit['exponent']:.2f} [{fit['ci'][0]:.2f}, {fit['ci'][1]:.2f}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    shown = list(x)[:: 2 if len(x) > 6 else 1]
    ax.set_xticks(shown, [f"{v:.2g}" for v in shown])  # label the swept values, not the decades
    ax.xaxis.set_minor_formatter(NullFormatter())
    _plain_log_labels(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("steps")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plain_log_labels(ax) -> None:
    """Plain-text tick labels: the default log labels go through mathtext, which is most of the drawing
    time of these figures."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def fig_scaling(results: dict[str, Any], conc: dict[str, Any], path: Path) -> Path:
    sw, fits = results["sweeps"], results["fits"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    a = axes.ravel()
    _loglog(a[0], sw["K"]["x"], {"end of Phase I": (sw["K"]["phase1"], fits["phase1_vs_K"], "tab:blue"),
                                 "time to eps": (sw["K"]["time_to_eps"], fits["time_vs_K"], "tab:green")},
            "K", "balanced: time vs K (theory: Phase I ~ K^2)")
    _loglog(a[1], sw["eps"]["x"], {"Phase II duration": (sw["eps"]["phase2"], fits["phase2_vs_eps"], "tab:orange")},
            "eps", f"balanced K={sw['eps']['K']}: Phase II vs eps (theory ~ 1/eps)")
    _loglog(a[2], sw["lr"]["x"], {"time to eps": (sw["lr"]["time_to_eps"], fits["time_vs_lr"], "tab:purple")},
            "lr", f"balanced K={sw['lr']['K']}: time vs lr (theory ~ 1/lr)")
    _loglog(a[3], sw["K"]["x"], {"dominant": (sw["K"]["dominant"], fits["dominant_vs_K"], DOMINANT),
                                 "minor": (sw["K"]["minor"], fits["minor_vs_K"], MINOR)},
            "K", f"imbalanced p_1={results['plan']['p1']:g}: time to eps vs K (theory: dominant ~ K^0)")
    _loglog(a[4], sw["p1"]["p_minor"], {"minor": (sw["p1"]["minor"], fits["minor_vs_pminor"], MINOR)},
            "minor probability p_k = (1 - p_1)/(K - 1)",
            f"imbalanced K={sw['p1']['K']}: minor time vs p_1 ({min(sw['p1']['x']):g}..{max(sw['p1']['x']):g})")
    ax = a[5]
    every = max(1, len(conc["x"]) // 3000)  # thin the scatter; the fit uses every point
    ax.loglog(conc["x"][::every], conc["y"][::every], ".", ms=2, alpha=0.4, color="tab:gray")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if conc["fit"] is not None:
        f = conc["fit"]
        xx = np.geomspace(conc["x"].min(), conc["x"].max(), 50)
        ax.plot(xx, f["prefactor"] * xx ** f["exponent"], "k-",
                label=f"slope {f['exponent']:.2f} [{f['ci'][0]:.2f}, {f['ci'][1]:.2f}]")
    _plain_log_labels(ax)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("sqrt(feature_loss[k])")
    ax.set_ylabel("1 - attention[k,k]")
    ax.set_title("main runs: attention concentration (theory: slope 1)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)

