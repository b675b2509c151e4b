"""Section ``sweep``: sweep throughput on the path sweeps take. Engines built from configs (an lr x p_1
grid) are trained together by ``trainer.train_batched`` (what the sweep worker and reproduce call), against
the same engines run one after another with ``trainer.train``. Both paths are compiled first, on a grid
with another seed (same shapes), so the timed calls only run; their results must agree."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import numpy as np

from icl_dynamics import trainer
from icl_dynamics.engines import build_engine

from .common import comparison, config, ms, sec, table, times

NAME = "sweep"


@dataclass(frozen=True)
class Knobs:
    configs: int = 256  # mean field: loop overhead dominates, the case vmap can help
    steps: int = 2000
    mc_configs: int = 16  # monte_carlo, M = 4096: compute bound
    mc_steps: int = 200


FULL = Knobs()
QUICK = Knobs(configs=4, steps=50, mc_configs=4, mc_steps=20)
CASES = {"mean_field": {"train__expectation": "mean_field"}, "monte_carlo": {"train__expectation": "monte_carlo"}}


def configs(n: int, steps: int, kw: dict, seed: int = 0) -> list:
    side = int(round(np.sqrt(n)))
    lrs, p1s = np.geomspace(0.25, 2.0, side), np.linspace(0.3, 0.8, n // side)
    return [config(train__lr=float(lr), data__dominant_prob=float(p), train__steps=steps, seed=seed, **kw)
            for lr in lrs for p in p1s]


def run_case(case: str, n: int, steps: int) -> dict:
    kw = CASES[case]
    schedule = trainer.log_schedule(steps)
    warm = [build_engine(c) for c in configs(n, steps, kw, seed=1)]
    trainer.train_batched(warm, schedule)
    trainer.train(warm[0], schedule, progress=False)

    t0 = time.perf_counter()
    es = [build_engine(c) for c in configs(n, steps, kw)]
    build_s = time.perf_counter() - t0  # the same engines serve both sides; building is timed apart

    with trainer.compilations() as compiled_vm:
        t0 = time.perf_counter()
        batched = trainer.train_batched(es, schedule)
        vmapped_s = time.perf_counter() - t0
    with trainer.compilations() as compiled_seq:
        t0 = time.perf_counter()
        sequential = [trainer.train(e, schedule, progress=False) for e in es]
        sequential_s = time.perf_counter() - t0
    diff = max(float(np.abs(b.trajectory.loss - s.trajectory.loss).max()) for b, s in zip(batched, sequential))
    return {"configs": len(es), "steps": steps, "case": f"population {case}", "vmapped_s": vmapped_s,
            "sequential_s": sequential_s, "build_engines_s": build_s, "ratio": sequential_s / vmapped_s,
            "max_abs_loss_diff": diff, "logged_rows": len(schedule),
            "all_completed": all(r.status == "completed" for r in batched + sequential),
            "compilations_while_timed": len(compiled_vm) + len(compiled_seq),
            "host_calls_per_run": -(-len(schedule) // trainer.CHUNK_ROWS)}


def run(k: Knobs) -> dict:
    with jax.enable_x64(True):
        return {"mean_field": run_case("mean_field", k.configs, k.steps),
                "monte_carlo": run_case("monte_carlo", k.mc_configs, k.mc_steps)}


def comparisons(r: dict) -> list[dict]:
    rows = []
    for key, goal in (("mean_field", 20), ("monte_carlo", None)):
        sw = r[key]
        rows.append(comparison(f"sweep {sw['configs']} configs x {sw['steps']} steps, {key}: train_batched vs "
                               "sequential train", sw["vmapped_s"], sw["sequential_s"], goal,
                               f"results agree to {sw['max_abs_loss_diff']:.1e}"))
    return rows


def tables(r: dict) -> dict[str, str]:
    rows = []
    for key in CASES:
        sw = r[key]
        rows.append([key, f"{sw['configs']} x {sw['steps']}", sec(sw["vmapped_s"]), sec(sw["sequential_s"]),
                     times(sw["ratio"]), f"{sw['vmapped_s'] / (sw['configs'] * sw['steps']) * 1e6:.3g}",
                     ms(sw["sequential_s"] / sw["configs"]), sw["host_calls_per_run"],
                     f"{sw['max_abs_loss_diff']:.1e}", sw["compilations_while_timed"]])
    head = ["case", "configs x steps", "train_batched", "sequential", "ratio", "us per config-step (batched)",
            "ms per sequential run", "host calls per run", "max loss diff", "compilations while timed"]
    return {"sweep": table(head, rows)}
