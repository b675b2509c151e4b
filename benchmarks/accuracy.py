"""Section ``population_vs_tokens``: the two engines at equal accuracy (default imbalanced setting: K = 16,
N = 256, p_1 = 0.5, lr = 1).

Reference: the exact population curve (exact_reference.SymmetricExact: the expectation over all count
vectors, summed exactly by symmetry). Error of a run: the largest relative deviation of its per-feature loss
curve from the reference, over all logged steps and features. Each engine's cost knob (count samples M,
batch B) is raised until the error is <= 1%; where that is infeasible here, the error-vs-knob curve is
fitted with the Monte Carlo law err = c / sqrt(knob) and the knob and run time are extrapolated (flagged).

Tokens trajectories (one per seed, trained together by trainer.train_batched) are scored on their logged
scores with an independent large count table (w integrated exactly), so evaluation noise does not count
against them (this favours the tokens engine). Run times of both engines come the same way:
steps x (median step time) + rows x (median observe time).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from icl_dynamics import trainer

from .common import comparison, engine, observe_call, pct, power_fit, sec, step_call, table, timed, times
from .exact_reference import SymmetricExact

NAME = "population_vs_tokens"
TARGET = 0.01


@dataclass(frozen=True)
class Knobs:
    repeats: int = 7
    steps: int = 2000
    log_every: int = 25
    pop_samples: tuple = (1024, 4096)  # M tried for the population engine
    batches: tuple = (4, 16, 64)  # B tried (and timed) for the tokens engine
    time_batches: tuple = (256,)  # B timed only (for the time-vs-B fit)
    fit_min_batch: int = 16  # smaller B are off the 1/sqrt(B) law
    seeds: int = 2
    eval_samples: int = 65536  # the independent table that scores tokens trajectories
    eval_prompts: int = 16  # the tokens engine's own metrics (unused by the score, kept cheap)


FULL = Knobs()
QUICK = Knobs(repeats=3, steps=100, log_every=20, pop_samples=(512,), batches=(4, 16), time_batches=(),
              fit_min_batch=4, seeds=1, eval_samples=1024)


def rel_error(fl: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(fl - ref) / ref))


def step_and_observe(e, repeats: int) -> dict:
    """Median seconds of one GD step and one observation of engine ``e``, compiled."""
    return {"step": timed(step_call(e), repeats), "observe": timed(observe_call(e), repeats)}


def run_time(t: dict, steps: int, rows: int) -> float:
    return steps * t["step"]["median_s"] + rows * t["observe"]["median_s"]


def fit_required(knobs, errors) -> dict:
    """err = c / sqrt(knob) (c: geometric mean over the points) -> the knob for err = TARGET."""
    knobs, errors = np.asarray(knobs, float), np.asarray(errors, float)
    c = float(np.exp(np.mean(np.log(errors * np.sqrt(knobs)))))
    free = power_fit(knobs, errors) if len(knobs) >= 2 else None
    return {"law": "err = c / sqrt(knob)", "c": c, "required": (c / TARGET) ** 2, "free_fit": free}


# the setting: the default imbalanced run (K = 16, N = 256, p_1 = 0.5, lr = 1)
K, N, P1, LR = 16, 256, 0.5, 1.0


@functools.cache
def reference(steps: int, log_every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The logged steps, and the exact reference's per-feature loss (R, K) and scores (R, K, K) there.
    Computed once per process (the exact section reuses it)."""
    logged = np.arange(0, steps + 1, log_every)
    ref, ref_scores = SymmetricExact(K, N, P1).run(LR, steps, logged)
    return logged, ref, ref_scores


@functools.cache
def tokens_side(k: Knobs) -> dict:
    """The tokens engine's half of the comparison: its error per batch B (``tokens``), its run time per B
    (``tokens_timing``), the B and run time that reach TARGET (``tokens_choice``, measured or from the fits)
    and the scoring table's own error (``eval_table``). Computed once per process and knobs: the exact
    section compares the closed form with the same tokens fit. Treat the result as read-only."""
    with jax.enable_x64(True):
        return _tokens_side(k)


def _tokens_side(k: Knobs) -> dict:
    steps = k.steps
    logged, ref, ref_scores = reference(steps, k.log_every)
    ev = engine(train__count_samples=k.eval_samples, seed=99)
    evaluate = jax.jit(lambda S: jax.lax.map(lambda s: ev.observe(ev.static, ev.consts, s).feature_loss, S))
    out: dict = {}
    tok = []
    for B in k.batches:
        seeds = [engine(train__engine="tokens", train__batch_size=B, train__eval_prompts=k.eval_prompts,
                        train__steps=steps, seed=s) for s in range(k.seeds)]
        errs = [rel_error(np.asarray(evaluate(jnp.asarray(r.trajectory.scores))), ref)
                for r in trainer.train_batched(seeds, logged)]
        tok.append({"B": B, "seeds": k.seeds, "rel_error": float(np.mean(errs)), "rel_errors": errs})
    out["tokens"] = tok
    timing = {}
    for B in sorted(set(k.batches) | set(k.time_batches)):
        t = step_and_observe(engine(train__engine="tokens", train__batch_size=B), k.repeats)
        timing[B] = {"run_s": run_time(t, steps, len(logged)), **t}
    out["tokens_timing"] = {str(b): v for b, v in timing.items()}
    ok = [r for r in tok if r["rel_error"] <= TARGET]
    bs = sorted(timing)
    lin = np.polyfit(bs, [timing[b]["run_s"] for b in bs], 1)
    if ok:
        out["tokens_choice"] = {"B": ok[0]["B"], "run_s": timing[ok[0]["B"]]["run_s"], "extrapolated": False}
    else:
        use = [r for r in tok if r["B"] >= k.fit_min_batch] or tok
        fit = fit_required([r["B"] for r in use], [r["rel_error"] for r in use])
        out["tokens_choice"] = {"B": fit["required"], "run_s": float(np.polyval(lin, fit["required"])),
                                "extrapolated": True, "fit": fit,
                                "time_fit": {"law": "run_s = a + b B", "b": float(lin[0]), "a": float(lin[1])}}
    floor = rel_error(np.asarray(evaluate(jnp.asarray(ref_scores))), ref)
    out["eval_table"] = {"M": k.eval_samples, "seed": 99, "rel_error_on_exact_trajectory": floor}
    return out


def run(k: Knobs) -> dict:
    with jax.enable_x64(True):
        return _run(k)


def _run(k: Knobs) -> dict:
    steps = k.steps
    logged, ref, _ = reference(steps, k.log_every)
    out: dict = {"steps": steps, "logged_rows": len(logged), "target_rel_error": TARGET,
                 "reference": "exact (symmetric enumeration of all count vectors)"}

    pop = []
    for M in k.pop_samples:
        e = engine(train__count_samples=M, train__steps=steps)
        res = trainer.train(e, logged, progress=False)
        t = step_and_observe(e, k.repeats)
        pop.append({"M": M, "rel_error": rel_error(res.trajectory.feature_loss, ref),
                    "run_s": run_time(t, steps, len(logged)), **t})
    out["population"] = pop
    ok = [r for r in pop if r["rel_error"] <= TARGET]
    if ok:
        out["population_choice"] = {"M": ok[0]["M"], "run_s": ok[0]["run_s"], "extrapolated": False}
    else:  # the count table needed, from the fit; its run time is measured, not extrapolated
        fit = fit_required([r["M"] for r in pop], [r["rel_error"] for r in pop])
        M = int(-(-fit["required"] // 1024) * 1024)
        t = step_and_observe(engine(train__count_samples=M), k.repeats)
        out["population_choice"] = {"M": M, "run_s": run_time(t, steps, len(logged)), "extrapolated": True,
                                    "fit": fit, "time": "measured at this M", **t}

    out.update(copy.deepcopy(tokens_side(k)))
    out["ratio"] = out["tokens_choice"]["run_s"] / out["population_choice"]["run_s"]
    out["extrapolated"] = out["tokens_choice"]["extrapolated"] or out["population_choice"]["extrapolated"]
    return out


def comparisons(r: dict) -> list[dict]:
    pc, tc = r["population_choice"], r["tokens_choice"]
    return [comparison(f"population vs tokens at <=1% error ({r['steps']} steps)", pc["run_s"], tc["run_s"], 1000,
                       f"M={pc['M']:.0f}{' (fit)' if pc['extrapolated'] else ''}, B={tc['B']:.0f}"
                       + (" (fit; tokens time extrapolated)" if tc["extrapolated"] else ""))]


def tables(r: dict) -> dict[str, str]:
    pc, tc = r["population_choice"], r["tokens_choice"]
    rows = [["population, monte_carlo", f"M = {p['M']}{' (default)' if p['M'] == 4096 else ''}",
             pct(p["rel_error"]), sec(p["run_s"])] for p in r["population"]]
    if pc["extrapolated"]:
        rows.append(["population, monte_carlo", f"M = {pc['M']} (from the fit)", "~1%",
                     f"{sec(pc['run_s'])} (measured at this M)"])
    timing = r["tokens_timing"]
    for t in r["tokens"]:
        err = pct(t["rel_error"]) + (f" (mean of {t['seeds']} seeds)" if t["seeds"] > 1 else "")
        rows.append(["tokens", f"B = {t['B']}", err, sec(timing[str(t["B"])]["run_s"])])
    for b in sorted(set(map(int, timing)) - {t["B"] for t in r["tokens"]}):
        rows.append(["tokens", f"B = {b}", "(timed only)", sec(timing[str(b)]["run_s"])])
    if tc["extrapolated"]:
        rows.append(["tokens", f"B = {tc['B']:.0f} (from the fit)", "~1%", f"{sec(tc['run_s'])} (**extrapolated**)"])
    rows.append(["evaluation table (scores tokens runs)", f"M = {r['eval_table']['M']}",
                 pct(r["eval_table"]["rel_error_on_exact_trajectory"]) + " on the exact trajectory", ""])
    out = {"accuracy": table(["engine", "knob", "max relative error", "run time"], rows)}

    def law(choice):
        f = choice.get("fit")
        if not f:
            return ["-", "-"]
        free = f["free_fit"]["exponent"] if f["free_fit"] else None
        return [f"{f['c']:.3g}", "-" if free is None else f"{free:+.2f}"]

    fit = [["population (count samples M)", *law(pc)], ["tokens (batch B)", *law(tc)]]
    out["accuracy_fit"] = table(["engine", "c in err = c / sqrt(knob)", "free-fit exponent"], fit)
    if pc.get("fit") and tc.get("fit") and tc.get("time_fit"):
        c2 = (tc["fit"]["c"] / pc["fit"]["c"]) ** 2
        prompt, row = tc["time_fit"]["b"], pc["run_s"] / pc["M"]
        why = [["(c_tokens / c_pop)^2: samples needed per count-table row", f"{c2:.3g}"],
               ["run time per sampled prompt per step (tokens, fit slope b / steps)", f"{prompt / r['steps']:.3g} s"],
               ["run time per count-table row per step (population, at the fitted M)", f"{row / r['steps']:.3g} s"],
               ["their product: the predicted ratio", times(c2 * prompt / row)],
               ["measured ratio", times(r["ratio"])]]
        out["accuracy_why"] = table(["factor", "value"], why)
    return out
