"""The records that carry measurements between stages, and the one place that knows their shapes.

``Metrics`` is what an engine observes at one step; a ``Trajectory`` is the logged rows stacked. Run
directories, checkpoints, sweeps and reproduce all read shapes from :func:`expected_shapes`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Metrics(NamedTuple):
    """Tracked quantities at one step. loss (), feature_loss (K,), scores (K, K) with
    scores[k, n] = v_n^T Q v_k, attention (K, K) with attention[k, n] the expected mass of a feature-k
    query on feature-n tokens."""

    loss: np.ndarray
    feature_loss: np.ndarray
    scores: np.ndarray
    attention: np.ndarray


class Trajectory(NamedTuple):
    """Logged rows, numpy float64: steps (T,) int64, loss (T,), feature_loss (T, K), scores (T, K, K),
    attention (T, K, K)."""

    steps: np.ndarray
    loss: np.ndarray
    feature_loss: np.ndarray
    scores: np.ndarray
    attention: np.ndarray

    @property
    def num_features(self) -> int:
        return self.feature_loss.shape[1]


def expected_shapes(T: int, K: int) -> dict[str, tuple[int, ...]]:
    """The shape of each Trajectory field for T rows and K features."""
    return {"steps": (T,), "loss": (T,), "feature_loss": (T, K), "scores": (T, K, K), "attention": (T, K, K)}


def stack_rows(steps: list[np.ndarray], metrics: list[Metrics]) -> Trajectory:
    """Concatenate chunks of rows (steps (R_i,), Metrics with leading R_i) into one Trajectory, dropping the
    repeated rows of chunk padding and of the steps after a divergence (logged steps must increase)."""
    s = np.concatenate([np.asarray(x) for x in steps])
    m = [np.concatenate([np.asarray(getattr(r, f)) for r in metrics]) for f in Metrics._fields]
    keep = np.concatenate([[True], np.diff(s) > 0])
    return Trajectory(s[keep].astype(np.int64), *(np.asarray(x[keep], np.float64) for x in m))


def to_arrays(traj: Trajectory, probs: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of trajectory.npz: the Trajectory's fields and probs (K,), float64 (steps too, as written
    since the first version)."""
    out = {k: np.asarray(getattr(traj, k), np.float64) for k in Trajectory._fields}
    out["probs"] = np.asarray(probs, np.float64)
    return out


def from_arrays(arrays: dict[str, np.ndarray]) -> Trajectory:
    traj = Trajectory(*(np.asarray(arrays[k], np.float64) for k in Trajectory._fields))
    return traj._replace(steps=np.asarray(arrays["steps"]).astype(np.int64))
