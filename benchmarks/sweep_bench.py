"""Sweep throughput: configs (lr x p_1 grid) in one vmapped, jitted call of trainer.scan_rows over stacked
engine consts, against the same configs run one after another with trainer.train (compiled once: only
values change between them). Both are warmed up first; the results must agree."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from common import engine

from icl_dynamics import trainer


def _engines(n: int, steps: int, kw: dict):
    side = int(round(np.sqrt(n)))
    lrs, p1s = np.geomspace(0.25, 2.0, side), np.linspace(0.3, 0.8, n // side)
    return [engine(train__lr=float(lr), data__dominant_prob=float(p), train__steps=steps, **kw)
            for lr in lrs for p in p1s]


def run_case(n: int, steps: int, kw: dict) -> dict:
    schedule = trainer.log_schedule(steps)
    targets = jnp.asarray(schedule[1:])
    warm = _engines(1, steps, kw)[0]
    trainer.train(warm, schedule, progress=False)  # compile the sequential path
    first = _engines(n, steps, kw)
    f = jax.jit(jax.vmap(lambda c, p: trainer.scan_rows(first[0].update, first[0].observe, first[0].static, c, p,
                                                       0, targets)))
    stack = lambda es: jax.tree.map(lambda *x: jnp.stack(x), *[e.consts for e in es])  # noqa: E731
    inits = jnp.stack([e.init for e in first])
    t0 = time.perf_counter()
    jax.block_until_ready(f(stack(first), inits))
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    es = _engines(n, steps, kw)
    build_s = time.perf_counter() - t0  # the same engines serve both sides; building is timed apart

    t0 = time.perf_counter()
    (_, _, ok), (_, m) = f(stack(es), inits)
    vm_loss = np.asarray(m.loss)
    vmapped_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    seq_loss = [trainer.train(e, schedule, progress=False).trajectory.loss for e in es]
    sequential_s = time.perf_counter() - t0
    diff = max(float(np.abs(vm_loss[i, : len(s) - 1] - s[1:]).max()) for i, s in enumerate(seq_loss))
    return {"configs": n, "steps": steps, "engine": kw or "population monte_carlo", "vmapped_s": vmapped_s,
            "vmapped_compile_s": compile_s - vmapped_s, "sequential_s": sequential_s, "build_engines_s": build_s,
            "host_calls_per_sequential_run": -(-len(schedule) // trainer.CHUNK_ROWS),
            "ratio": sequential_s / vmapped_s, "max_abs_loss_diff": diff}


def run(plan) -> dict:
    return {"mean_field": run_case(plan.sweep_configs, plan.sweep_steps, {"train__expectation": "mean_field"}),
            "monte_carlo": run_case(plan.sweep_mc_configs, plan.sweep_mc_steps, {})}
