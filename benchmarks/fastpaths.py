"""Section ``fast_paths``: the fast paths, checked and timed. No XLA compilation when only values change,
count samples drawn once per run (at build time, none inside the compiled loop), few host round-trips, and
the population engine's matrix-product gradient against the autodiff path it replaces."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from icl_dynamics import trainer
from icl_dynamics.engines import population as P

from .common import comparison, engine, ms, sec, table, timed, times

NAME = "fast_paths"
RANDOM_PRIMITIVES = ("random_bits", "threefry2x32", "random_wrap", "random_seed")


@dataclass(frozen=True)
class Knobs:
    repeats: int = 7
    recompile_steps: int = 200  # the runs that check recompilation
    default_steps: int = 2000  # the timed default run, and the host round-trip count
    default_repeats: int = 2
    matrix_samples: int = 4096  # M of the matrix-vs-autodiff comparison


FULL = Knobs()
QUICK = Knobs(repeats=3, recompile_steps=20, default_steps=100, default_repeats=1, matrix_samples=1024)


def _train(e, schedule):
    return trainer.train(e, schedule, progress=False)


def recompilation(steps: int) -> dict:
    """Train twice per engine, the second time with other lr, dominant_prob and seed (same shapes): the
    second run must trigger no XLA compilation (counted through jax.monitoring)."""
    schedule = trainer.log_schedule(steps)
    out = {}
    small = {"data__num_features": 4, "data__prompt_length": 32}
    for name, kw in {"population_monte_carlo": {},  # full sizes: later sections reuse the compiled code
                     "population_mean_field": {"train__expectation": "mean_field", **small},
                     "tokens": {"train__engine": "tokens", "train__batch_size": 8, "train__eval_prompts": 8,
                                **small}}.items():
        e = engine(train__steps=steps, **kw)
        with trainer.compilations() as first:
            _train(e, schedule)
        other = engine(train__steps=steps, train__lr=0.5, data__dominant_prob=0.7, seed=7, **kw)
        with trainer.compilations() as second:
            _train(other, schedule)
        out[name] = {"compilations_first_run": len(first), "compilations_second_run": len(second),
                     "recompiled": len(second) > 0}
    return out


def samples_once() -> dict:
    """The population engine's count table is built with the engine (consts); the compiled loop draws no
    random numbers. The tokens engine does draw (fresh prompts each step, by design)."""
    targets = jnp.arange(1, 17)
    out = {}
    for name, kw in {"population_monte_carlo": {}, "tokens": {"train__engine": "tokens"}}.items():
        e = engine(**kw)
        loop = partial(trainer.scan_rows, e.grad, e.observe, e.optimizer, e.static)
        jaxpr = str(jax.make_jaxpr(loop)(e.consts, e.lr, trainer.initial_state(e), 0, targets))
        out[name] = {"random_ops_in_compiled_loop": sorted({p for p in RANDOM_PRIMITIVES if p in jaxpr})}
    a, b = engine(), engine()
    out["table_reproducible"] = bool(np.array_equal(np.asarray(a.consts.table.counts),
                                                    np.asarray(b.consts.table.counts)))
    return out


def host_round_trips(steps: int) -> dict:
    schedule = trainer.log_schedule(steps)
    calls = -(-len(schedule) // trainer.CHUNK_ROWS)
    return {"steps": steps, "logged_rows": len(schedule), "rows_per_call": trainer.CHUNK_ROWS,
            "host_calls_per_run": calls}


def population_matrix_path(repeats: int, samples: int) -> dict:
    """The gradient and one observation at K = 16, M = samples: matrix path vs autodiff of the generic
    path (the optimizer step itself is the same for both, so it is left out)."""
    e = engine(train__count_samples=samples)
    st, c = e.static, e.consts
    S = jnp.asarray(np.random.default_rng(0).normal(scale=2.0, size=e.init.shape))
    fast = jax.jit(lambda s: e.grad(st, c, s, 0))
    slow = jax.jit(lambda s: jax.grad(P.population_loss)(s, c.probs, c.table))
    fast_obs = jax.jit(lambda s: e.observe(st, c, s))
    slow_obs = jax.jit(lambda s: P.per_query(s, c.table, False))
    r = {"K": int(S.shape[0]), "M": samples,
         "grad_matrix": timed(lambda: fast(S), repeats), "grad_autodiff": timed(lambda: slow(S), repeats),
         "observe_matrix": timed(lambda: fast_obs(S), repeats),
         "observe_autodiff_path": timed(lambda: slow_obs(S), repeats)}
    r["grad_ratio"] = r["grad_autodiff"]["median_s"] / r["grad_matrix"]["median_s"]
    r["observe_ratio"] = r["observe_autodiff_path"]["median_s"] / r["observe_matrix"]["median_s"]
    r["max_abs_diff_grad"] = float(jnp.abs(fast(S) - slow(S)).max())
    big = S * 1000.0  # spread > SPREAD_MAX: the exact per-entry fallback must run, finite and equal
    r["large_scores_spread"] = float(jnp.max(big.max(1) - big.min(1)))
    r["large_scores_max_abs_diff"] = float(jnp.abs(fast(big) - slow(big)).max())
    r["large_scores_finite"] = bool(jnp.all(jnp.isfinite(fast(big))))
    return r


def default_run(repeats: int, steps: int) -> dict:
    """The default-sized population run (monte_carlo, M = 4096, the default log schedule), compiled already."""
    schedule = trainer.log_schedule(steps)
    e = engine(train__steps=steps)
    r = timed(lambda: _train(e, schedule).trajectory.loss, repeats)
    r["steps"], r["logged_rows"], r["M"] = steps, len(schedule), int(e.consts.table.counts.shape[0])
    return r


def run(k: Knobs) -> dict:
    with jax.enable_x64(True):
        return {"recompilation": recompilation(k.recompile_steps), "count_samples": samples_once(),
                "host_round_trips": host_round_trips(k.default_steps),
                "population_matrix_path": population_matrix_path(k.repeats, k.matrix_samples),
                "default_population_run": default_run(k.default_repeats, k.default_steps)}


def all_checked(r: dict) -> bool:
    """Every fast-path property holds (the goal row of the report)."""
    mp = r["population_matrix_path"]
    return (not any(v["recompiled"] for v in r["recompilation"].values())
            and not r["count_samples"]["population_monte_carlo"]["random_ops_in_compiled_loop"]
            and r["count_samples"]["table_reproducible"] and mp["large_scores_finite"]
            and mp["max_abs_diff_grad"] < 1e-12 and mp["large_scores_max_abs_diff"] < 1e-12)


def comparisons(r: dict) -> list[dict]:
    mp = r["population_matrix_path"]
    return [comparison(f"population gradient: matrix path vs autodiff (K={mp['K']}, M={mp['M']})",
                       mp["grad_matrix"]["median_s"], mp["grad_autodiff"]["median_s"])]


def tables(r: dict) -> dict[str, str]:
    mp, hr, cs = r["population_matrix_path"], r["host_round_trips"], r["count_samples"]
    rc, dr = r["recompilation"], r["default_population_run"]
    rows = [[f"XLA compilations in a second {name} run (new lr, p_1, seed)", v["compilations_second_run"],
             f"{v['compilations_first_run']} in the first"] for name, v in rc.items()]
    rows += [["random-number primitives in the compiled population loop",
              ", ".join(cs["population_monte_carlo"]["random_ops_in_compiled_loop"]) or "none",
              f"tokens loop: {', '.join(cs['tokens']['random_ops_in_compiled_loop']) or 'none'} (by design)"],
             ["count table reproducible from the seed", "yes" if cs["table_reproducible"] else "**no**", ""],
             [f"host calls per run ({hr['steps']} steps, {hr['logged_rows']} logged rows)",
              hr["host_calls_per_run"], f"{hr['rows_per_call']} rows per call"],
             [f"population gradient, matrix path (K={mp['K']}, M={mp['M']})", f"{ms(mp['grad_matrix']['median_s'])} ms",
              f"autodiff {ms(mp['grad_autodiff']['median_s'])} ms: {times(mp['grad_ratio'])}; "
              f"max abs diff {mp['max_abs_diff_grad']:.1e}"],
             ["population observation, matrix path", f"{ms(mp['observe_matrix']['median_s'])} ms",
              f"generic path {ms(mp['observe_autodiff_path']['median_s'])} ms: {times(mp['observe_ratio'])}"],
             [f"fallback at score spread {mp['large_scores_spread']:.3g}",
              f"max abs diff {mp['large_scores_max_abs_diff']:.1e}",
              "finite" if mp["large_scores_finite"] else "**not finite**"],
             [f"population run, monte_carlo, M = {dr['M']} ({dr['steps']} steps, compiled)", sec(dr["median_s"]),
              f"{dr['logged_rows']} logged rows"]]
    return {"fast_paths": table(["check", "measured", "note"], rows)}
