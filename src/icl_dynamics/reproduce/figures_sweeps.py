"""The sweep and finding figures of the reproduction report: times against K, eps and lr with the theory's
reference lines, their local exponents, the (K, p_1) phase diagram and the finite-N floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from .. import style  # noqa: E402
from ..plots import save_formats, step_axis, x_of  # noqa: E402
from .findings import CONTROL_N, boundaries  # noqa: E402
from .orders import WINDOW, local_exponents  # noqa: E402

COLORS = ("#1f77b4", "#2ca02c", "#9467bd", style.DOMINANT, "0.5")


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else x for x in v], np.float64)


def _log_ticks(ax, values) -> None:
    """Label the swept values on a log x axis (every other one when crowded)."""
    v = sorted(set(values))
    shown = v[:: 2 if len(v) > 6 else 1]
    ax.xaxis.set_major_locator(FixedLocator(shown))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}" if x >= 1 else f"{x:.2g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _times(ax, x, series, ref: tuple[float, str, str], xlabel: str, ylabel: str, title: str) -> None:
    """Measured times (markers) and a theory reference line c x^b through the point nearest the asymptote
    (``ref``: exponent, name, 'large' or 'small' for where the asymptote lies)."""
    for label, t, color in series:
        ax.plot(x, _arr(t), "o-", color=color, lw=0.8, label=label)
    b, name, toward = ref
    t0 = _arr(series[0][1])
    ok = [i for i in np.argsort(x) if np.isfinite(t0[i])]
    if ok:
        i = ok[-1] if toward == "large" else ok[0]
        xx = np.geomspace(min(x), max(x), 50)
        ax.plot(xx, t0[i] * (xx / x[i]) ** b, "--", color=style.THEORY, lw=1.0, label=f"$\\propto$ {name} (theory)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_ticks(ax, x)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # label 2x and 5x of each decade too: a panel spanning one decade then still has labelled ticks
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()


def fig_scaling(results: dict[str, Any], stem: Path, formats) -> list[Path]:
    m, c = results["measurements"], results["controls"]
    p1, e, lr, d = (m[k] for k in ("phase1_order_K2", "phase2_order_inv_eps", "time_inverse_lr",
                                   "dominant_K_independent"))
    ctl = c["dominant_p1_2_over_K"]
    with style.context():
        fig, a = plt.subplots(2, 2, figsize=style.figsize(style.FULL, height=4.6), layout="constrained")
        a = a.ravel()
        eps = "$\\epsilon$"
        _times(a[0], p1["x"], [("end of Phase I", p1["t"], COLORS[0]), (f"time to {eps}", p1["total"], COLORS[1])],
               (2, "$K^2$", "large"), "number of features $K$", "GD steps", "balanced: Phase I and total time vs $K$")
        _times(a[1], e["x"], [("Phase II duration", e["t"], COLORS[2])], (-1, "$1/\\epsilon$", "small"),
               f"target loss {eps}", "GD steps", f"balanced, K = {results['sweeps']['eps']['K']}: Phase II vs {eps}")
        _times(a[2], lr["x"], [(f"time to {eps}", lr["t"], COLORS[0])], (-1, "1/lr", "small"), "step size lr",
               "GD steps", f"balanced, K = {results['sweeps']['lr']['K']}: time vs step size")
        _times(a[3], d["x"], [(f"dominant, $p_1$ = {results['sweeps']['K_dominant']['p1']:g}", d["t"], COLORS[3]),
                              ("dominant, $p_1$ = 2/K (control)", _control_on(d["x"], ctl), COLORS[4])],
               (0, "$K^0$", "large"), "number of features $K$", f"GD steps to {eps}",
               "imbalanced: dominant time vs $K$")
        return save_formats(fig, stem, formats)


def _control_on(x, ctl) -> list:
    got = dict(zip(ctl["x"], ctl["t"]))
    return [got.get(v) for v in x]


def _local(ax, loc: list[dict], theory: float, xlabel: str, title: str, color: str, toward: str,
           window: int) -> None:
    xm = np.array([np.sqrt(e["x_lo"] * e["x_hi"]) for e in loc])
    b = np.array([e["b"] for e in loc])
    u = np.array([e["u"] for e in loc])
    ax.errorbar(xm, b, yerr=u, fmt="o-", color=color, lw=0.8, capsize=0, label="local exponent ± uncertainty")
    ax.axhline(theory, ls="--", color=style.THEORY, lw=1.0, label=f"theory {theory:g}")
    if len(loc) >= window:
        w = xm[-window:]
        label = f"tested: the last {window} toward the asymptote" if window > 1 else "tested: nearest the limit"
        ax.axvspan(min(w) / 1.05, max(w) * 1.05, color="0.88", lw=0, label=label)
    ax.set_xscale("log")
    _log_ticks(ax, xm)
    ax.set_xlabel(xlabel + (", asymptote at left" if toward == "small" else ", asymptote at right"))
    ax.set_ylabel("local exponent $d \\ln t / d \\ln x$")
    ax.set_title(title)
    lo, hi = min(np.min(b - u), theory), max(np.max(b + u), theory)
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.45 * (hi - lo))  # headroom for the legend
    ax.legend(loc="upper center", ncols=1)


def fig_exponents(results: dict[str, Any], stem: Path, formats) -> list[Path]:
    m = results["measurements"]
    panels = [("phase1_order_K2", 2.0, "large", "$K$ (pair midpoint)", "end of Phase I vs $K$", WINDOW),
              ("phase2_order_inv_eps", -1.0, "small", "$\\epsilon$ (pair midpoint)", "Phase II duration vs $\\epsilon$",
               WINDOW),
              ("time_inverse_lr", -1.0, "small", "lr (pair midpoint)", "time to $\\epsilon$ vs lr", 1),
              ("dominant_K_independent", 0.0, "large", "$K$ (pair midpoint)", "dominant time to $\\epsilon$ vs $K$",
               WINDOW)]
    with style.context():
        fig, a = plt.subplots(2, 2, figsize=style.figsize(style.FULL, height=4.6), layout="constrained")
        for ax, (name, b, toward, xlabel, title, window), color in zip(a.ravel(), panels, COLORS):
            loc = local_exponents(m[name]["x"], m[name]["t"], m[name]["u"], toward)
            _local(ax, loc, b, xlabel, title, color, toward, window)
        return save_formats(fig, stem, formats)


def fig_phase_diagram(results: dict[str, Any], stem: Path, formats) -> list[Path]:
    m, ctl = results["measurements"]["four_phase_threshold"], results["controls"]["threshold_finite_N"]
    cells = m["cells"]
    Ks = sorted({c["K"] for c in cells})
    with style.context():
        fig, (a, b) = plt.subplots(1, 2, figsize=style.figsize(style.FULL, height=3.4), layout="constrained")
        for rising, mk, label in ((True, "o", "$B_{k,n}$ rises: four phases"), (False, "x", "$B_{k,n}$ never rises")):
            sel = [c for c in cells if (c["rise"] > 0) == rising]
            a.plot([c["K"] for c in sel], [c["p1"] for c in sel], mk, color=COLORS[0 if rising else 3], ls="none",
                   label=label)
        kk = np.geomspace(min(Ks) * 0.9, max(Ks) * 1.1, 50)
        a.plot(kk, 1 / np.sqrt(kk), "--", color=style.THEORY, lw=1.0, label="$p_1 = 1/\\sqrt{K}$ (derived)")
        for data, color, label in ((m, "k", "measured boundary (mean field)"),
                                   (ctl, COLORS[4], f"measured boundary, N = {CONTROL_N} (control)")):
            rows = [r for r in boundaries(data) if r["single_crossing"]]
            lo = np.array([r["bracket"][0] for r in rows])
            hi = np.array([r["bracket"][1] for r in rows])
            a.errorbar([r["K"] * (1.04 if color != "k" else 1) for r in rows], (lo + hi) / 2, yerr=(hi - lo) / 2,
                       fmt="s", ms=2.5, color=color, capsize=0, elinewidth=1.4, label=label)
        a.set_xscale("log")
        a.set_yscale("log")
        _log_ticks(a, Ks)
        a.yaxis.set_major_locator(FixedLocator([0.1, 0.2, 0.3, 0.5, 0.8]))
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.yaxis.set_minor_formatter(NullFormatter())
        a.set_xlabel("number of features $K$")
        a.set_ylabel("dominant probability $p_1$")
        a.set_title("four phases above the boundary")
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
        floor = min(c["rise"] for c in cells if c["rise"] > 0) / 3
        for K, color in zip(Ks, COLORS):
            sel = sorted((c for c in cells if c["K"] == K), key=lambda c: c["p1"])
            r = [c["p1"] * np.sqrt(K) for c in sel]
            b.plot(r, [max(c["rise"], floor) for c in sel], "o-", color=color, lw=0.8, label=f"K = {K}")
        b.axvline(1.0, ls="--", color=style.THEORY, lw=1.0, label="$p_1 = 1/\\sqrt{K}$")
        b.set_yscale("log")
        b.set_xlabel("$p_1 \\sqrt{K}$")
        b.set_ylabel(f"rise of $B_{{k,n}}$ above step 0 (none: {floor:.0e})")
        b.set_title("every $K$ crosses at $p_1 \\sqrt{K} = 1$")
        b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
        return save_formats(fig, stem, formats)


def fig_floor(results: dict[str, Any], stem: Path, formats) -> list[Path]:
    m, ctl = results["measurements"]["finite_N_floor"], results["controls"]["floor_mean_field"]
    k, pk = m["feature"], m["p_k"]
    with style.context():
        fig, (a, b) = plt.subplots(1, 2, figsize=style.figsize(style.FULL, height=2.8), layout="constrained")
        last = 0
        for r, color in zip(m["rows"], COLORS):
            a.plot(x_of(r["steps"]), r["loss"], color=color, lw=1.0, label=f"N = {r['N']}")
            last = max(last, r["steps"][-1])
        r = ctl["rows"][0]
        a.plot(x_of(r["steps"]), r["loss"], color="0.6", lw=1.0, ls="-.", label="mean field (control)")
        xs, ys = [], []
        for r in m["rows"]:
            xs += [x_of(r["steps"][len(r["steps"]) // 2]), x_of(r["steps"][-1]), np.nan]
            ys += [r["formula"], r["formula"], np.nan]
        a.plot(xs, ys, "--", color="k", lw=0.8, label="floor formula")
        a.set_yscale("log")
        a.set_ylim(bottom=min(rr["lower"] for rr in m["rows"]) / 3)
        step_axis(a, last)
        a.set_ylabel(f"feature loss $L_{k + 1}$ ($p_{k + 1}$ = {pk:g})")
        a.set_title("the minor feature loss settles at the floor")
        a.legend(loc="lower left", ncols=2)
        N = np.array([r["N"] for r in m["rows"]], np.float64)
        nn = np.linspace(N.min() * 0.9, N.max() * 1.05, 60)
        b.fill_between(nn, 0.5 * (1 - pk) ** nn, (1 - pk) ** nn, color="0.88", lw=0,
                       label="bounds $[\\frac{1}{2}(1-p_k)^N, (1-p_k)^N]$")
        b.plot(nn, 0.5 * (1 - pk) ** nn, ":", color="k", lw=1.0, label="$\\frac{1}{2}(1-p_k)^N$ (earlier spec)")
        b.plot(N, [r["formula"] for r in m["rows"]], "+--", color="k", lw=0.8, ms=7, label="formula at the last step")
        b.errorbar(N, [r["settled"] for r in m["rows"]], yerr=[r["u"] for r in m["rows"]], fmt="o", color=COLORS[0],
                   capsize=0, ms=3, label="measured settled level")
        b.set_yscale("log")
        b.set_xlabel("prompt length $N$")
        b.set_ylabel(f"floor of $L_{k + 1}$")
        b.set_title("floor against prompt length $N$")
        b.legend(loc="lower left")
        return save_formats(fig, stem, formats)


# the robustness figure's panels: group -> (title, colour map of its family); the paper's model is in black
GROUPS = {"transformer": ("literal transformer (sampled prompts)", "Blues"),
          "optimizer": ("other optimizers", "Oranges"),
          "attention": ("other attention (enumerated prompts)", "Greens"),
          "data": ("other data (exact expectation)", "Purples"),
          "other": ("other relaxations", "Greys")}
LINESTYLES = ("-", "--", "-.", (0, (1, 1.2)), (0, (5, 1.5, 1, 1.5, 1, 1.5)), (0, (3, 1)))


def fig_robustness(results: dict[str, Any], stem: Path, formats) -> list[Path]:
    """The minor feature's loss under every relaxation: one panel per group of relaxations (transformer,
    optimizers, attention, data), each with the paper's model in black; a colour family per group and a line
    style per case; each panel's legend below it, the paper's model and eps in one legend on top."""
    rob, eps = results["robustness"], results["plan"]["eps"]
    paper, groups = rob["rows"][0], {}
    for r in rob["rows"][1:]:
        g = r.get("group", "other")
        groups.setdefault(g if g in GROUPS else "other", []).append(r)
    order = [g for g in GROUPS if g in groups] or ["other"]
    ncols = min(2, len(order))
    nrows = -(-len(order) // ncols)
    longest = max([len(v) for v in groups.values()] + [1])
    with style.context():
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True, layout="constrained",
                                 figsize=style.figsize(style.FULL, height=nrows * (1.9 + 0.13 * longest) + 0.45))
        for ax in axes.flat[len(order):]:
            ax.remove()
        below = ScaledTranslation(0, -27 / 72, fig.dpi_scale_trans)  # under the tick labels and the x label
        for ax, g in zip(axes.flat, order):
            title, cmap = GROUPS[g]
            rows = groups.get(g, [])
            shades = plt.get_cmap(cmap)(np.linspace(0.95, 0.5, max(len(rows), 2)))
            ref = ax.plot(x_of(np.asarray(paper["curve"]["steps"])), paper["curve"]["loss"], color="k", lw=1.6,
                          zorder=3, label=f"{paper['relaxation']}, in every panel")
            lines = [ax.plot(x_of(np.asarray(r["curve"]["steps"])), r["curve"]["loss"], color=shades[i],
                             ls=LINESTYLES[i % len(LINESTYLES)], lw=1.1, label=r["relaxation"], zorder=2)[0]
                     for i, r in enumerate(rows)]
            line_eps = ax.axhline(eps, color=style.THEORY, ls=":", lw=0.9, zorder=1, label=f"$\\epsilon$ = {eps:g}")
            ax.set_yscale("log")
            step_axis(ax, rob["steps"])
            ax.set_title(title)
            ax.set_ylabel("minor feature loss $L_2$")
            ax.tick_params(labelbottom=True, labelleft=True)
            if lines:
                ax.legend(handles=lines, loc="upper left", bbox_to_anchor=(0.0, 0.0), fontsize=7,
                          bbox_transform=ax.transAxes + below)
        fig.legend(handles=[ref[0], line_eps], loc="outside upper center", ncol=2, title_fontsize=9,
                   title=f"imbalanced, K = {rob['K']}, N = {rob['N']}, p$_1$ = {rob['p1']:g}: the minor feature's "
                         "loss under each relaxation alone")
        return save_formats(fig, stem, formats)
