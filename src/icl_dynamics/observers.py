"""Observers: quantities derived from a trajectory (summaries, tidy metric tables)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .trainer import Trajectory


def first_step_below(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """First logged step with values <= threshold (values (T,)); None if never. Resolution: the log
    schedule."""
    hit = np.flatnonzero(values <= threshold)
    return int(steps[hit[0]]) if hit.size else None


def time_to_eps(traj: Trajectory, eps: float) -> list[int | None]:
    return [first_step_below(traj.steps, traj.feature_loss[:, k], eps) for k in range(traj.feature_loss.shape[1])]


def summarize(traj: Trajectory, eps: float, status: str = "completed", **extra: Any) -> dict[str, Any]:
    """summary.json content. Features are 0-based here, as in every file."""
    return {
        "status": status,
        "final_step": int(traj.steps[-1]),
        "final_loss": float(traj.loss[-1]),
        "final_feature_loss": [float(x) for x in traj.feature_loss[-1]],
        "eps": eps,
        "time_to_eps": time_to_eps(traj, eps),
        **extra,
    }


def metrics_table(traj: Trajectory, probs: np.ndarray) -> pa.Table:
    """One row per (logged step, feature): a tidy table for pandas or polars."""
    T, K = traj.feature_loss.shape
    idx = np.arange(K)
    att_own = traj.attention[:, idx, idx]
    off = ~np.eye(K, dtype=bool)
    rest = traj.scores[:, off].reshape(T, K, K - 1) if K > 1 else np.zeros((T, K, 0))
    return pa.table({
        "step": np.repeat(traj.steps, K),
        "feature": np.tile(idx, T),
        "prob": np.tile(probs, T),
        "loss": np.repeat(traj.loss, K),
        "feature_loss": traj.feature_loss.ravel(),
        "attention_on_own_feature": att_own.ravel(),
        "attention_on_feature_0": traj.attention[:, :, 0].ravel(),
        "score_own": traj.scores[:, idx, idx].ravel(),  # A_k
        "score_to_feature_0": traj.scores[:, :, 0].ravel(),  # B_{k,1} in the paper's 1-based names
        "score_other_mean": (rest.mean(-1) if K > 1 else np.zeros((T, K))).ravel(),
    })


class PowerLaw(NamedTuple):
    """value ~ prefactor * x ** exponent, fitted by least squares in log-log; [lo, hi] is the ``level``
    confidence interval of the exponent (Student t, n - 2 degrees of freedom; NaN when n < 3)."""

    exponent: float
    lo: float
    hi: float
    prefactor: float
    n: int
    level: float


def fit_power_law(x, y, level: float = 0.95) -> PowerLaw | None:
    """OLS of log y on log x over the points with finite x > 0, y > 0 (x (n,), y (n,)); None when fewer than
    two distinct x remain."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return None
    fit = stats.linregress(np.log(x), np.log(y))
    n = len(x)
    half = stats.t.ppf(0.5 + level / 2, n - 2) * fit.stderr if n > 2 else np.nan
    return PowerLaw(float(fit.slope), float(fit.slope - half), float(fit.slope + half),
                    float(np.exp(fit.intercept)), n, level)
