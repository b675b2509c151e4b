"""The sweep worker: a batch of configs in, one row per run out. Pure (no files), so it runs the same in
this process, a local worker process or a remote Dask worker."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, NamedTuple

import jax
import numpy as np

from ..config import validate
from ..data import feature_probs
from ..engines import build_engine
from ..evaluate import eval_config, eval_watch, run_report
from ..measures import sweep_row
from ..schedule import stop_rule
from ..trainer import fault_step_from_env, log_schedule, structure, train, train_batched
from ..trajectory import to_arrays


class Outcome(NamedTuple):
    """One run of a batch: its sweep row (measures.sweep_row, plus batch_runs and wall_time_s, and the eval:
    block's final loss where there is one) and, when trajectories are kept, the arrays of its trajectory.npz,
    its final parameters (a numpy pytree of the engine's parameters, for params.npz) and the eval block's
    rows (eval_trajectory.npz) and summary.json's engine report (as ``train`` writes it)."""

    row: dict[str, Any]
    trajectory: dict[str, np.ndarray] | None
    params: Any = None
    watched: dict[str, np.ndarray] | None = None
    report: dict[str, Any] | None = None


def run_batch(configs: list[dict[str, Any]], keep_trajectories: bool = False) -> list[Outcome]:
    """Train a batch of runs (config dicts, as sent to workers) with ``vmap``; one Outcome per run, in order."""
    started = time.time()
    cfgs = [validate(c) for c in configs]
    engines, watches = [build_engine(c) for c in cfgs], [eval_watch(c) for c in cfgs]
    schedules = [log_schedule(c.train.steps, c.train.log_every) for c in cfgs]
    subgroups: dict[tuple, list[int]] = defaultdict(list)
    flows: dict[int, dict] = {}
    solver: dict[int, dict] = {}  # a flow run's solver statistics, for its report
    trained: dict[int, tuple] = {}
    for i, (e, s) in enumerate(zip(engines, schedules)):
        if cfgs[i].train.method == "flow":  # an adaptive solve per run: nothing to vmap
            from ..flow import run_flow

            result, flows[i], solver[i] = run_flow(e, cfgs[i], watch=watches[i])
            trained[i] = (result, 1)
        else:
            subgroups[(structure(e, s, watches[i]), stop_rule(cfgs[i]))].append(i)
    fault = fault_step_from_env()
    for idx in subgroups.values():
        watched = None if watches[idx[0]] is None else [watches[i] for i in idx]
        for i, res in zip(idx, train_batched([engines[i] for i in idx], schedules[idx[0]], fault,
                                             stop_rule(cfgs[idx[0]]), watched)):
            trained[i] = (res, len(idx))
    if keep_trajectories:
        for i, (res, vmapped) in list(trained.items()):
            if res.params is None:  # stopped at eps before its batch, whose parameters went on: train it alone,
                # as 'train' would, to the same stop (the same logged rows), for its final parameters
                alone = train(engines[i], schedules[i], progress=False, fault_step=fault, stop=stop_rule(cfgs[i]))
                trained[i] = (res._replace(params=alone.params), vmapped)
    per_run_s = (time.time() - started) / len(cfgs)
    out = []
    for i, cfg in enumerate(cfgs):
        res, vmapped = trained[i]
        probs = feature_probs(cfg.data)
        row = sweep_row(cfg, res.trajectory, probs, res.status, res.diverged_at, flows.get(i))
        row.update(batch_runs=vmapped, wall_time_s=per_run_s)
        if res.watched is not None:
            row["eval_final_loss"] = float(res.watched.loss[-1])
        ev = None if res.watched is None else to_arrays(res.watched, feature_probs(eval_config(cfg).data))
        if keep_trajectories:
            report = {**({"flow": solver[i]} if i in solver else {}), **run_report(cfg, engines[i], res)}
            out.append(Outcome(row, to_arrays(res.trajectory, probs), jax.device_get(res.params), ev, report))
        else:
            out.append(Outcome(row, None))
    return out
