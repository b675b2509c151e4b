"""The fast paths, checked and timed: no recompilation when only values change, count samples drawn once per
run (at build time, none inside the compiled loop), few host round-trips, and the population engine's
matrix-product gradient against the autodiff path it replaces."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from common import engine, timed

from icl_dynamics import trainer
from icl_dynamics.engines import population as P

RANDOM_PRIMITIVES = ("random_bits", "threefry2x32", "random_wrap", "random_seed")


def _train(e, schedule):
    return trainer.train(e, schedule, progress=False)


def recompilation(steps: int) -> dict:
    """Train twice per engine, the second time with other lr, dominant_prob and seed (same shapes):
    the compiled chunk function's cache must not grow."""
    schedule = trainer.log_schedule(steps)
    out = {}
    small = {"data__num_features": 4, "data__prompt_length": 32}
    for name, kw in {"population_monte_carlo": {},  # default sizes: later sections reuse the compiled code
                     "population_mean_field": {"train__expectation": "mean_field", **small},
                     "tokens": {"train__engine": "tokens", "train__batch_size": 8, "train__eval_prompts": 8,
                                **small}}.items():
        _train(engine(train__steps=steps, **kw), schedule)
        before = trainer.advance._cache_size()
        _train(engine(train__steps=steps, train__lr=0.5, data__dominant_prob=0.7, seed=7, **kw), schedule)
        after = trainer.advance._cache_size()
        out[name] = {"cache_entries_before": before, "cache_entries_after": after, "recompiled": after > before}
    return out


def samples_once() -> dict:
    """The population engine's count table is built with the engine (consts); the compiled loop draws no
    random numbers. The tokens engine does draw (fresh prompts each step, by design)."""
    targets = jnp.arange(1, 17)
    out = {}
    for name, kw in {"population_monte_carlo": {}, "tokens": {"train__engine": "tokens"}}.items():
        e = engine(**kw)
        jaxpr = str(jax.make_jaxpr(partial(trainer.scan_rows, e.update, e.observe, e.static))(
            e.consts, e.init, 0, targets))
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
    """One GD step and one observation at K = 16, M = samples: matrix path vs autodiff of the generic path."""
    e = engine(train__count_samples=samples)
    st, c = e.static, e.consts
    S = jnp.asarray(np.random.default_rng(0).normal(scale=2.0, size=e.init.shape))
    fast = jax.jit(lambda s: e.update(st, c, s, 0))
    slow = jax.jit(lambda s: s - c.lr * jax.grad(P.population_loss)(s, c.probs, c.table))
    fast_obs = jax.jit(lambda s: e.observe(st, c, s))
    slow_obs = jax.jit(lambda s: P.per_query(s, c.table, False))
    r = {"K": int(S.shape[0]), "M": samples,
         "update_matrix": timed(lambda: fast(S), repeats), "update_autodiff": timed(lambda: slow(S), repeats),
         "observe_matrix": timed(lambda: fast_obs(S), repeats),
         "observe_autodiff_path": timed(lambda: slow_obs(S), repeats)}
    r["update_ratio"] = r["update_autodiff"]["median_s"] / r["update_matrix"]["median_s"]
    r["observe_ratio"] = r["observe_autodiff_path"]["median_s"] / r["observe_matrix"]["median_s"]
    r["max_abs_diff_update"] = float(jnp.abs(fast(S) - slow(S)).max())
    big = S * 1000.0  # spread > SPREAD_MAX: the exact per-entry fallback must run, finite and equal
    r["large_scores_spread"] = float(jnp.max(big.max(1) - big.min(1)))
    r["large_scores_max_abs_diff"] = float(jnp.abs(fast(big) - slow(big)).max())
    r["large_scores_finite"] = bool(jnp.all(jnp.isfinite(fast(big))))
    return r


def default_run(repeats: int, steps: int) -> dict:
    """The default population run (monte_carlo, M = 4096, its default log schedule): compile once, then
    another run with new values reuses the compiled code."""
    schedule = trainer.log_schedule(steps)
    e = engine(train__steps=steps)
    r = timed(lambda: _train(e, schedule).trajectory.loss, repeats)
    r["steps"], r["logged_rows"] = steps, len(schedule)
    return r
