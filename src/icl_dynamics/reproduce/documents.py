"""The documents of ``reproduce``: report.md, a self-contained report.html (figures embedded as base64
PNG), claims.json and results.json."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..storage import atomic_write_json, atomic_write_text, load_run
from .claims import SPEC_TOL, concentration, evaluate_claims
from .figures import FIGURES, fig_balanced, fig_heatmaps, fig_imbalanced, fig_scaling

FILES = ("report.md", "report.html", "claims.json", "results.json")
RUNS = ("balanced", "imbalanced")


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

