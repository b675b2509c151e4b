"""The report of ``reproduce``: figures, the claims table, ``report.md``, a self-contained ``report.html``
(figures embedded as base64 PNG) and ``claims.json``.

Criteria come from the theory, never from the measurements: an order stated as O(x^b) passes when b lies
inside the 95% confidence interval of the fitted log-log exponent or within ``EXPONENT_TOL`` of it (the
constants and log factors that an O(.) statement leaves free bend a finite-range fit by about that much).
Failing claims are reported like passing ones.

Layout of a reproduce output folder (only these are written, and only these are replaced by --overwrite)::

    report.md, report.html, claims.json, results.json
    figures/balanced.png, imbalanced.png, heatmaps.png, scaling.png
    runs/balanced/, runs/imbalanced/   run directories of the two main runs
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

from . import __version__  # noqa: E402
from .experiments import fit_power  # noqa: E402
from .plots import DOMINANT, MINOR, plot_feature_loss, plot_own_attention, plot_scores, save  # noqa: E402
from .storage import ARTIFACTS, Run, atomic_write_json, atomic_write_text, load_run, prepare_output_dir  # noqa: E402,E501

EXPONENT_TOL = 0.3
SPEC_TOL = 0.03  # "within a few percent" of the spec section 6 table
FIGURES = ("balanced.png", "imbalanced.png", "heatmaps.png", "scaling.png")
FILES = ("report.md", "report.html", "claims.json", "results.json")
RUNS = ("balanced", "imbalanced")
PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def prepare_output(path: str | Path, overwrite: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless ``overwrite``, which removes only the files
    ``reproduce`` writes (see the module doc)."""
    owned = [*FILES, *(f"figures/{n}" for n in FIGURES), *(f"runs/{r}/{n}" for r in RUNS for n in ARTIFACTS)]
    return prepare_output_dir(path, overwrite, owned, "report")


# ---------------------------------------------------------------- claims

def _exp(fit: dict | None) -> str:
    if fit is None:
        return "not measured (fewer than 3 points reached)"
    lo, hi = fit["ci"]
    return f"{fit['exponent']:.3f} [{lo:.3f}, {hi:.3f}] ({fit['n']} points)"


def _exponent_ok(fit: dict | None, theory: float) -> bool:
    if fit is None:
        return False
    lo, hi = fit["ci"]
    return bool(lo <= theory <= hi or abs(fit["exponent"] - theory) <= EXPONENT_TOL)


def _exponent_criterion(theory: float) -> str:
    return f"theory exponent {theory:g} inside the 95% CI or within +-{EXPONENT_TOL:g} of the fit"


def _ends(phases: dict, group: str, j: int) -> list[int | None]:
    return [f["phases"][j]["end"] for f in phases["features"] if f["group"] == group]


def _med(xs: list[int | None]) -> str:
    got = [x for x in xs if x is not None]
    return f"{int(np.median(got))}" if got else "not reached"


def concentration(runs: dict[str, Run]) -> dict[str, Any]:
    """1 - attention[k,k] against sqrt(feature_loss[k]): at the end of the main runs, and the log-log slope
    over all rows with attention[k,k] >= 1/2 (every feature of both runs pooled)."""
    xs, ys, final = [], [], []
    for run in runs.values():
        t = run.trajectory
        K = t.feature_loss.shape[1]
        own = t.attention[:, np.arange(K), np.arange(K)]
        late = own >= 0.5
        xs.append(np.sqrt(t.feature_loss[late]))
        ys.append(1 - own[late])
        final += [(1 - own[-1, k], math.sqrt(t.feature_loss[-1, k])) for k in range(K)]
    x, y = np.concatenate(xs), np.concatenate(ys)
    return {"fit": fit_power(x, y), "x": x, "y": y, "final_gap_max": max(g for g, _ in final),
            "final_sqrt_loss_max": max(s for _, s in final)}


def evaluate_claims(results: dict[str, Any], runs: dict[str, Run],
                    conc: dict[str, Any]) -> list[dict[str, Any]]:
    """The claims table: claim (as the paper states it), quantity, measured, criterion, passed."""
    fits = results["fits"]
    eps = results["plan"]["eps"]
    pb, pi = results["main"]["balanced"]["phases"], results["main"]["imbalanced"]["phases"]
    rows = []

    e1, e2 = _ends(pb, "balanced", 0), _ends(pb, "balanced", 1)
    both = sum(a is not None and b is not None and 0 < a < b for a, b in zip(e1, e2))
    rows.append({
        "claim": "Balanced features: finite-time convergence to near-zero error, through two phases",
        "quantity": "balanced run: end of Phase I (attention[k,k] >= 1/2) and Phase II (feature_loss[k] <= eps)",
        "measured": f"Phase I ends at step {_med(e1)}, Phase II at {_med(e2)} (medians); {both}/{len(e1)} "
                    f"features with both, in order",
        "criterion": "every feature reaches both boundaries, with 0 < end of I < end of II",
        "passed": both == len(e1)})

    dom = _ends(pi, "dominant", 0)[0]
    minor_iv = _ends(pi, "minor", 3)
    t = runs["imbalanced"].trajectory
    K = t.attention.shape[1]
    row_max = bool(np.all(t.attention[:, 0, 0] >= t.attention[:, 0, 1:].max(-1))) if K > 1 else True
    b_rise = float((t.scores[:, 0, 1:] - t.scores[:1, 0, 1:]).max()) if K > 1 else 0.0
    first = dom is not None and all(m is None or dom < m for m in minor_iv)
    rows.append({
        "claim": "Imbalanced features: the dominant feature reaches near-zero error first, in one phase",
        "quantity": "imbalanced run: dominant time to eps vs the minor ones; the dominant query's minor-type "
                    "events (own attention overtaking, B_{1,n} peak)",
        "measured": f"dominant at step {dom if dom is not None else 'not reached'}, first minor at "
                    f"{min([m for m in minor_iv if m is not None], default='not reached')}; attention[1,1] is the "
                    f"largest of its row at every step: {row_max}; max rise of B_{{1,n}}: {b_rise:.2g}",
        "criterion": "dominant reaches eps before every minor feature, its own attention is never overtaken "
                     "and B_{1,n} never rises above its start (no minor-type phase boundary)",
        "passed": bool(first and row_max and b_rise <= 1e-9)})

    ends = [[f["phases"][j]["end"] for j in range(4)] for f in pi["features"] if f["group"] == "minor"]
    ordered = sum(all(e is not None for e in es) and 0 < es[0] < es[1] < es[2] < es[3]
                  and (dom is None or es[3] > dom) for es in ends)
    med = [_med([es[j] for es in ends]) for j in range(4)]
    rows.append({
        "claim": "Under-represented features reach near-zero error later, in four phases",
        "quantity": "imbalanced run, minor features: ends of Phases I (B_{k,n} peak), II (attention[k,k] > "
                    "attention[k,1]), III (attention[k,k] >= 1/2), IV (feature_loss[k] <= eps)",
        "measured": f"median ends {', '.join(med)}; {ordered}/{len(ends)} minor features with four ordered "
                    f"phases ending after the dominant one",
        "criterion": "every minor feature has 0 < I < II < III < IV and IV later than the dominant's end",
        "passed": ordered == len(ends) and len(ends) > 0})

    f1, ft = fits["phase1_vs_K"], fits["time_vs_K"]
    rows.append({
        "claim": "The convergence time is quadratic in K (balanced)",
        "quantity": "log-log exponent vs K of the end of Phase I, and of the time to eps "
                    f"(mean field, K = {results['sweeps']['K']['x']})",
        "measured": f"Phase I: {_exp(f1)}; time to eps: {_exp(ft)}",
        "criterion": f"Phase I: {_exponent_criterion(2)} (spec: Phase I ~ K^2/lr); time to eps: exponent <= "
                     f"{2 + EXPONENT_TOL:g} (a quadratic bound; Phase II ~ K/(lr eps) adds a K^1 term)",
        "passed": _exponent_ok(f1, 2) and ft is not None and ft["exponent"] <= 2 + EXPONENT_TOL})

    for claim, fit_key, what, knob, theory in (
            ("Phase II takes a time proportional to 1/eps", "phase2_vs_eps", "the Phase II duration", "eps", -1),
            ("The convergence time is proportional to 1/lr", "time_vs_lr", "the time to eps", "lr", -1)):
        f, sweep = fits[fit_key], results["sweeps"][knob]
        rows.append({
            "claim": claim,
            "quantity": f"log-log exponent of {what} vs {knob} (balanced, K = {sweep['K']}, "
                        f"{knob} {min(sweep['x']):g}..{max(sweep['x']):g})",
            "measured": _exp(f), "criterion": _exponent_criterion(theory), "passed": _exponent_ok(f, theory)})

    f = fits["dominant_vs_K"]
    rows.append({
        "claim": "The dominant feature's convergence time does not depend on K",
        "quantity": f"log-log exponent of the dominant time to eps vs K (imbalanced, p_1 = "
                    f"{results['plan']['p1']:g})",
        "measured": _exp(f), "criterion": _exponent_criterion(0), "passed": _exponent_ok(f, 0)})

    bound = math.sqrt(2 * eps)
    rows.append({
        "claim": "At convergence attention concentrates: a query of feature k attends almost only to tokens "
                 "of feature k",
        "quantity": "1 - attention[k,k] against sqrt(feature_loss[k]): log-log slope over the rows with "
                    "attention[k,k] >= 1/2 (both main runs), and max_k (1 - attention[k,k]) at the end",
        "measured": f"slope {_exp(conc['fit'])}; final max_k (1 - attention[k,k]) = {conc['final_gap_max']:.3g}",
        "criterion": f"slope: {_exponent_criterion(1)} (the error is the attention leaking off feature k); "
                     f"final 1 - attention[k,k] <= sqrt(2 eps) = {bound:.3g} for every k",
        "passed": _exponent_ok(conc["fit"], 1) and conc["final_gap_max"] <= bound})
    return rows


# ---------------------------------------------------------------- figures

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
        e = _ends(phases, group, j)
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


# ---------------------------------------------------------------- documents

def _fmt(x: Any) -> str:
    if x is None:
        return "not reached"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _blocks(results: dict[str, Any], claims: list[dict[str, Any]]) -> list[tuple]:
    plan, sw, main = results["plan"], results["sweeps"], results["main"]
    npass = sum(c["passed"] for c in claims)
    b = [("h1", "In-context convergence of transformers: reproduction report"),
         ("p", f"icl-dynamics {__version__}, plan '{plan['name']}', experiments took "
               f"{results['wall_time_s']:.0f} s. {npass} of {len(claims)} claims PASS"
               + ("." if npass == len(claims) else f", {len(claims) - npass} FAIL (listed below, not hidden).")),
         ("p", "Paper: Huang, Cheng & Liang, 'In-Context Convergence of Transformers' (ICML 2024). The paper "
               "states orders with unknown constants; the criteria below come from those orders (and from "
               "docs/spec.md), not from the measurements. Features are 1-based in this report and 0-based in "
               "every file (phases.json, trajectory.npz, results.json)."),
         ("h2", "Claims"),
         ("table", ["Claim (as the paper states it)", "Quantity measured", "Measured", "Verdict", "Criterion"],
          [[c["claim"], c["quantity"], c["measured"], "PASS" if c["passed"] else "FAIL", c["criterion"]]
           for c in claims])]
    if results["spec_check"]:
        b += [("h2", "Phase boundaries against the mean-field check of spec section 6"),
              ("p", "Imbalanced, K = 16, p_1 = 0.5, lr = 1, eps = 1e-2, mean-field expectation; minor boundaries "
                    f"are medians over the minor features. Agreement criterion: within {SPEC_TOL:.0%}."),
              ("table", ["Event", "Spec step", "Detected step", "Relative error", "Within"],
               [[r["event"], str(r["spec"]), _fmt(r["measured"]), _fmt(r["rel_error"]),
                 "yes" if r["rel_error"] is not None and r["rel_error"] <= SPEC_TOL else "NO"]
                for r in results["spec_check"]])]
    mb, mi = main["balanced"], main["imbalanced"]
    exp_main = mb["expectation"] + (f" ({mb['count_samples']} count vectors)" if mb["count_samples"] else "")
    b += [("h2", "Figures"),
          ("img", "figures/balanced.png",
           f"Balanced main run (population engine, {exp_main}, K = {mb['K']}, N = {mb['N']}, lr = {mb['lr']:g}, "
           f"eps = {mb['eps']:g}): per-feature loss and attention[k,k], Phase I and II shaded."),
          ("img", "figures/imbalanced.png",
           f"Imbalanced main run (population engine, {exp_main}, p_1 = {plan['p1']:g}): dominant against minor "
           "loss curves (dashed: the dominant's end); A_k, B_{k,1} and the mean of B_{k,n} for minor feature 2, "
           "with its four phase ends."),
          ("img", "figures/heatmaps.png", "Attention matrix (query feature x key feature) at each phase boundary "
           "of the two main runs."),
          ("img", "figures/scaling.png", "Scaling sweeps (population engine, mean-field expectation), log-log, "
           "with OLS fits and 95% t-intervals of the exponents; last panel: attention concentration in the "
           "main runs.")]
    names = {"phase1_vs_K": ("end of Phase I vs K", "2"), "time_vs_K": ("time to eps vs K", "<= 2 (bound)"),
             "phase2_vs_eps": ("Phase II vs eps", "-1"), "time_vs_lr": ("time to eps vs lr", "-1"),
             "dominant_vs_K": ("dominant time vs K", "0"), "minor_vs_K": ("minor time vs K", "none stated"),
             "minor_vs_pminor": ("minor time vs p_k = (1-p_1)/(K-1)", "none stated")}
    b += [("h2", "Fitted exponents"),
          ("table", ["Quantity", "Exponent", "95% CI", "Points", "Theory"],
           [[names[k][0], _fmt(f and f["exponent"]), "-" if f is None else f"[{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]",
             "-" if f is None else str(f["n"]), names[k][1]] for k, f in results["fits"].items()])]
    floor = [0.5 * (1 - p) ** mb["N"] for p in (1 / mb["K"], (1 - plan["p1"]) / (mb["K"] - 1))]
    b += [("h2", "Experiments"),
          ("table", ["Experiment", "Engine / expectation", "Settings"],
           [["balanced and imbalanced main runs", f"population / {exp_main}",
             f"K = {mb['K']}, N = {mb['N']}, lr = {mb['lr']:g}, eps = {mb['eps']:g}, p_1 = {plan['p1']:g}, "
             f"{mb['steps']} and {mi['steps']} steps; run directories in runs/"],
            ["K sweep", "population / mean_field", f"balanced and imbalanced, K = {sw['K']['x']}"],
            ["eps sweep", "population / mean_field", f"balanced, K = {sw['eps']['K']}, eps = "
             f"{', '.join(f'{e:.2g}' for e in sw['eps']['x'])} (one run, times read off its trajectory)"],
            ["lr sweep", "population / mean_field", f"balanced, K = {sw['lr']['K']}, lr = {sw['lr']['x']}"],
            ["p_1 sweep", "population / mean_field", f"imbalanced, K = {sw['p1']['K']}, p_1 = {sw['p1']['x']}"]]),
          ("p", "Phases follow the operational definitions of spec section 6 (src/icl_dynamics/phases.py): threshold "
                "crossings need persistence with hysteresis and are interpolated between logged steps; the B_{k,n} "
                "peak is taken on a Savitzky-Golay smoothed curve over ln(step). Mean-field sweep runs log steps "
                "on a 1% geometric grid."),
          ("p", f"Finite N: a feature absent from the prompt adds an error floor of about 1/2 (1 - p_k)^N: "
                f"{floor[0]:.2g} for a balanced feature and {floor[1]:.2g} for a minor one at N = {mb['N']}, "
                f"far below eps = {mb['eps']:g}, so it does not affect these runs (the mean-field sweeps have "
                "no floor).")]
    return b


def _md(blocks: list[tuple]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {blk[1]}\n")
        elif kind == "h2":
            out.append(f"## {blk[1]}\n")
        elif kind == "p":
            out.append(f"{blk[1]}\n")
        elif kind == "table":
            cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            out.append("| " + " | ".join(blk[1]) + " |\n|" + "---|" * len(blk[1]) + "\n"
                       + "".join("| " + " | ".join(cell(c) for c in row) + " |\n" for row in blk[2]))
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})\n\n*{blk[2]}*\n")
    return "\n".join(out)


def _html(blocks: list[tuple], root: Path) -> str:
    e = html.escape
    body = []
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(blk[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(
                f"<td class='{'pass' if c == 'PASS' else 'fail' if c == 'FAIL' else ''}'>{e(str(c))}</td>"
                for c in row) + "</tr>" for row in blk[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode((root / blk[1]).read_bytes()).decode()
            body.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(blk[2])}'>"
                        f"<figcaption>{e(blk[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;font-size:0.9em}th{background:#f0f0f0}.pass{color:#1a7f37;font-weight:bold}"
             ".fail{color:#cf222e;font-weight:bold}img{max-width:100%}figcaption{font-size:0.9em;color:#444}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>icl-dynamics report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_report(out: str | Path, results: dict[str, Any]) -> list[Path]:
    """Figures, report.md, report.html, claims.json and results.json in ``out`` (main runs already there)."""
    out = Path(out)
    runs = {name: load_run(out / results["main"][name]["run_dir"]) for name in RUNS}
    phases = {name: results["main"][name]["phases"] for name in RUNS}
    (out / "figures").mkdir(exist_ok=True)
    conc = concentration(runs)
    claims = evaluate_claims(results, runs, conc)
    fig_balanced(runs["balanced"], phases["balanced"], out / "figures" / "balanced.png")
    fig_imbalanced(runs["imbalanced"], phases["imbalanced"], out / "figures" / "imbalanced.png")
    fig_heatmaps(runs, phases, out / "figures" / "heatmaps.png")
    fig_scaling(results, conc, out / "figures" / "scaling.png")
    blocks = _blocks(results, claims)
    atomic_write_text(out / "report.md", _md(blocks))
    atomic_write_text(out / "report.html", _html(blocks, out))
    atomic_write_json(out / "claims.json", [
        {"claim": c["claim"], "measured": f"{c['quantity']}: {c['measured']}", "criterion": c["criterion"],
         "passed": bool(c["passed"])} for c in claims])
    atomic_write_text(out / "results.json", json.dumps(_jsonable(results), indent=1, allow_nan=False) + "\n")
    return [out / n for n in FILES] + [out / "figures" / n for n in FIGURES]
