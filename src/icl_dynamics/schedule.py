"""Schedules: which steps are logged, in what chunks the trainer runs, and when a run may stop early.

The logged steps are split into fixed-size chunks of CHUNK_ROWS rows: one compiled chunk serves every run
length. ``train.stop_at_eps`` ends a run at a chunk boundary once every feature has reached eps and the run
has gone on to ``stop_factor`` times that step; the rule reads only the logged rows, so a single run and the
same run inside a vmapped batch stop at the same row.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

CHUNK_ROWS = 16


def log_schedule(steps: int, log_every: int | None = None, points: int = 256) -> np.ndarray:
    """Sorted unique logged steps, always including 0 and ``steps``.

    Default: ``points`` log-spaced steps (resolving fast early transitions) united with ``points`` linear
    ones (resolving late ones), so the file stays small for any run length.
    """
    if log_every is not None:
        s = np.arange(0, steps + 1, log_every)
    else:
        s = np.concatenate([np.geomspace(1, steps, points), np.linspace(0, steps, points)])
    return np.unique(np.concatenate([[0, steps], np.rint(s)]).astype(np.int64))


def padded_chunk(schedule: np.ndarray, i: int) -> jnp.ndarray:
    """Rows i .. i + CHUNK_ROWS of the schedule, padded by repeating its last step (a fixed shape: one
    compiled chunk serves every run length)."""
    chunk = schedule[i: i + CHUNK_ROWS]
    return jnp.asarray(np.pad(chunk, (0, CHUNK_ROWS - len(chunk)), mode="edge"))


class StopAtEps(NamedTuple):
    """Stop once every feature_loss <= eps (first logged row where all are) and the step has reached
    ``factor`` times that row's step; the run ends at the chunk boundary after that row."""

    eps: float
    factor: float

    def crossing(self, steps: np.ndarray, feature_loss: np.ndarray) -> int | None:
        """The first logged step with every feature_loss <= eps, or None. steps (T,), feature_loss (T, K)."""
        reached = np.flatnonzero(np.all(feature_loss <= self.eps, axis=1))
        return None if reached.size == 0 else int(steps[reached[0]])

    def rows(self, steps: np.ndarray, feature_loss: np.ndarray) -> int | None:
        """How many logged rows the run keeps (a multiple of CHUNK_ROWS), or None to go on."""
        crossed = self.crossing(steps, feature_loss)
        past = np.flatnonzero(steps >= self.factor * crossed) if crossed is not None else np.zeros(0)
        return None if past.size == 0 else CHUNK_ROWS * math.ceil((int(past[0]) + 1) / CHUNK_ROWS)


def stop_rule(cfg) -> StopAtEps | None:
    """The config's early stop (``train.stop_at_eps``), or None."""
    return StopAtEps(cfg.eps, cfg.train.stop_factor) if cfg.train.stop_at_eps else None
