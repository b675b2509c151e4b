"""Batching: runs whose array shapes and code paths agree share one vmapped computation. The plan depends
only on the spec (not on workers or on what is already done), so a resumed or distributed sweep computes
exactly the batches of a local, uninterrupted one."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import NamedTuple

import numpy as np

from ..config import RunConfig
from ..engines import engine_spec
from .spec import PlannedRun

class Batch(NamedTuple):
    id: str
    runs: list[PlannedRun]


def batch_key(cfg: RunConfig) -> tuple:
    """Runs with equal keys have equal array shapes and code paths, so they can share one ``vmap``: the
    engine, the options that select code paths, the schedule, and what the engine declares fixes its shapes
    (``EngineSpec.shape_key``). Values (lr, p, seed...) are traced arrays and are left out. Where a shape
    still differs inside a batch (an exact table's size), the worker splits the batch further."""
    m, t = cfg.model, cfg.train
    stop = (t.stop_factor, cfg.eps) if t.stop_at_eps else None  # one stop rule per vmapped batch
    return (t.engine, m.include_query_in_softmax, m.attention, t.steps, t.log_every, stop, t.optimizer,
            tuple(sorted(t.optimizer_args.items())), *engine_spec(t.engine).shape_key(cfg))


def plan_batches(runs: list[PlannedRun], max_batch: int) -> list[Batch]:
    """Group by :func:`batch_key`, then split each group into near-equal batches of at most ``max_batch``.

    The plan depends only on the spec (not on workers or on what is already done), which makes a resumed
    or distributed sweep compute the same batches as a local, uninterrupted one.
    """
    groups: dict[tuple, list[PlannedRun]] = defaultdict(list)
    for r in runs:
        groups[batch_key(r.config)].append(r)
    batches = []
    for members in groups.values():
        n = math.ceil(len(members) / max_batch)
        for part in np.array_split(np.arange(len(members)), n):
            chunk = [members[i] for i in part]
            bid = hashlib.sha256("".join(r.hash for r in chunk).encode()).hexdigest()[:16]
            batches.append(Batch(bid, chunk))
    return batches

