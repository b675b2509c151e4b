"""Population against tokens engine at equal accuracy (default imbalanced setting: K = 16, N = 256,
p_1 = 0.5, lr = 1).

Reference: the exact population curve (exact_reference.SymmetricExact: the expectation over all count
vectors, summed exactly by symmetry). Error of a run: the largest relative deviation of its per-feature loss
curve from the reference, over all logged steps and features. Each engine's cost knob (count samples M,
batch B) is raised until the error is <= 1%; where that is infeasible here, the error-vs-knob curve is
fitted with the Monte Carlo law err = c / sqrt(knob) and the knob and run time are extrapolated (flagged).

Tokens trajectories are scored on their logged scores with an independent large count table
(w integrated exactly), so evaluation noise does not count against them (this favours the tokens engine).
Run times of both engines come the same way: steps x (median step time) + rows x (median observe time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from common import engine, observe_call, power_fit, step_call, timed
from exact_reference import SymmetricExact

from icl_dynamics import trainer

TARGET = 0.01


def rel_error(fl: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(fl - ref) / ref))


def step_and_observe(e, repeats: int) -> dict:
    """Median seconds of one GD step and one observation of engine ``e``, compiled."""
    return {"step": timed(step_call(e), repeats), "observe": timed(observe_call(e), repeats)}


def run_time(t: dict, steps: int, rows: int) -> float:
    return steps * t["step"]["median_s"] + rows * t["observe"]["median_s"]


def seeds_run(e, targets, seeds: int):
    """Trajectory scores (seeds, R, K, K) of ``seeds`` runs of one engine, vmapped over the training key."""
    keys = jnp.stack([jax.random.fold_in(e.consts.key, s) for s in range(seeds)])
    f = jax.jit(jax.vmap(lambda k: trainer.scan_rows(e.update, e.observe, e.static, e.consts._replace(key=k),
                                                     e.init, 0, targets)))
    _, (_, metrics) = f(keys)
    return np.asarray(metrics.scores)


def fit_required(knobs, errors) -> dict:
    """err = c / sqrt(knob) (c: geometric mean over the points) -> the knob for err = TARGET."""
    knobs, errors = np.asarray(knobs, float), np.asarray(errors, float)
    c = float(np.exp(np.mean(np.log(errors * np.sqrt(knobs)))))
    free = power_fit(knobs, errors) if len(knobs) >= 2 else None
    return {"law": "err = c / sqrt(knob)", "c": c, "required": (c / TARGET) ** 2, "free_fit": free}


def run(plan) -> dict:
    steps, K, N, p1, lr = plan.acc_steps, 16, 256, 0.5, 1.0
    logged = np.arange(0, steps + 1, plan.acc_log_every)
    targets = jnp.asarray(logged[1:])
    ref, ref_scores = SymmetricExact(K, N, p1).run(lr, steps, logged)
    out: dict = {"steps": steps, "logged_rows": len(logged), "target_rel_error": TARGET,
                 "reference": "exact (symmetric enumeration of all count vectors)"}

    # evaluation table for tokens trajectories, and its own error (on the exact trajectory's scores)
    ev = engine(train__count_samples=plan.acc_eval_samples, seed=99)
    evaluate = jax.jit(lambda S: jax.lax.map(lambda s: ev.observe(ev.static, ev.consts, s).feature_loss, S))

    pop = []
    for M in plan.acc_pop_samples:
        e = engine(train__count_samples=M, train__steps=steps)
        res = trainer.train(e, logged, progress=False)
        t = step_and_observe(e, plan.repeats)
        pop.append({"M": M, "rel_error": rel_error(res.trajectory.feature_loss, ref),
                    "run_s": run_time(t, steps, len(logged)), **t})
    out["population"] = pop
    ok = [r for r in pop if r["rel_error"] <= TARGET]
    if ok:
        out["population_choice"] = {"M": ok[0]["M"], "run_s": ok[0]["run_s"], "extrapolated": False}
    else:  # the count table needed, from the fit; its run time is measured, not extrapolated
        fit = fit_required([r["M"] for r in pop], [r["rel_error"] for r in pop])
        M = int(-(-fit["required"] // 1024) * 1024)
        t = step_and_observe(engine(train__count_samples=M), plan.repeats)
        out["population_choice"] = {"M": M, "run_s": run_time(t, steps, len(logged)), "extrapolated": True,
                                    "fit": fit, "time": "measured at this M", **t}

    tok = []
    for B in plan.acc_batches:
        e = engine(train__engine="tokens", train__batch_size=B, train__eval_prompts=plan.acc_eval_prompts,
                   train__steps=steps)
        scores = seeds_run(e, targets, plan.acc_seeds)
        errs = [rel_error(np.concatenate([ref[:1], np.asarray(evaluate(jnp.asarray(s)))]), ref) for s in scores]
        tok.append({"B": B, "seeds": plan.acc_seeds, "rel_error": float(np.mean(errs)), "rel_errors": errs})
    out["tokens"] = tok
    timing = {}
    for B in sorted(set(plan.acc_batches) | set(plan.acc_time_batches)):
        e = engine(train__engine="tokens", train__batch_size=B)
        t = step_and_observe(e, plan.repeats)
        timing[B] = {"run_s": run_time(t, steps, len(logged)), **t}
    out["tokens_timing"] = {str(b): v for b, v in timing.items()}
    ok = [r for r in tok if r["rel_error"] <= TARGET]
    bs = sorted(timing)
    lin = np.polyfit(bs, [timing[b]["run_s"] for b in bs], 1)
    if ok:
        out["tokens_choice"] = {"B": ok[0]["B"], "run_s": timing[ok[0]["B"]]["run_s"], "extrapolated": False}
    else:
        use = [r for r in tok if r["B"] >= plan.acc_fit_min_batch] or tok
        fit = fit_required([r["B"] for r in use], [r["rel_error"] for r in use])
        out["tokens_choice"] = {"B": fit["required"], "run_s": float(np.polyval(lin, fit["required"])),
                                "extrapolated": True, "fit": fit,
                                "time_fit": {"law": "run_s = a + b B", "b": float(lin[0]), "a": float(lin[1])}}
    floor = rel_error(np.asarray(evaluate(jnp.asarray(ref_scores))), ref)
    out["eval_table"] = {"M": plan.acc_eval_samples, "seed": 99, "rel_error_on_exact_trajectory": floor}
    out["ratio"] = out["tokens_choice"]["run_s"] / out["population_choice"]["run_s"]
    out["extrapolated"] = out["tokens_choice"]["extrapolated"] or out["population_choice"]["extrapolated"]
    return out
