"""Measures: what is derived from a trajectory. Summaries (summary.json), the tidy metrics table
(metrics.parquet), the sweep row (one per run in sweep.parquet) and the one power-law fit."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .config import RunConfig, flatten
from .data import setting_name
from .phases import detect_phases
from .trajectory import Trajectory


def first_step_below(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """First logged step with values <= threshold (values (T,)); None if never. Resolution: the log
    schedule."""
    hit = np.flatnonzero(values <= threshold)
    return int(steps[hit[0]]) if hit.size else None


def time_to_eps(traj: Trajectory, eps: float) -> list[int | None]:
    return [first_step_below(traj.steps, traj.feature_loss[:, k], eps) for k in range(traj.feature_loss.shape[1])]


def summarize(traj: Trajectory, eps: float, status: str = "completed", **extra: Any) -> dict[str, Any]:
    """summary.json content. Features are 0-based here, as in every file. Where per-feature quantities do not
    exist (Gaussian tokens: NaN), they are null."""
    per_feature = has_features(traj)
    warnings = loss_warnings(traj)
    return {
        "status": status,
        "final_step": int(traj.steps[-1]),
        "final_loss": float(traj.loss[-1]),
        "final_feature_loss": [float(x) for x in traj.feature_loss[-1]] if per_feature else None,
        "eps": eps,
        "time_to_eps": time_to_eps(traj, eps) if per_feature else None,
        **({"warnings": warnings} if warnings else {}),
        **extra,
    }


GREW = 10.0  # final / initial loss above which a finished run is flagged


def loss_warnings(traj: Trajectory) -> list[str]:
    """What a finished run's numbers say is wrong though every update stayed finite: the loss ending more than
    :data:`GREW` times above where it started (a step size past the stable range, blowing up slowly)."""
    first, last = float(traj.loss[0]), float(traj.loss[-1])
    if np.isfinite(last) and last > GREW * first:
        return [f"the loss grew from {first:.3g} at step {int(traj.steps[0])} to {last:.3g} at step "
                f"{int(traj.steps[-1])}: train.lr is likely past the stable range for this setting"]
    return []


def has_features(traj: Trajectory) -> bool:
    """Whether the run has per-feature quantities (an engine fills them with NaN where they do not apply)."""
    return bool(np.all(np.isfinite(traj.feature_loss)))


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

    def to_json(self) -> dict[str, Any]:
        """As results.json stores a fit."""
        return {"exponent": self.exponent, "ci": [self.lo, self.hi], "prefactor": self.prefactor, "n": self.n,
                "level": self.level}


def fit_power_law(x, y, level: float = 0.95, min_points: int = 2) -> PowerLaw | None:
    """OLS of log y on log x over the points with finite x > 0, y > 0 (x (n,), y (n,)); None when fewer than
    two distinct x, or fewer than ``min_points`` points, remain (3 are needed for an interval)."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2 or len(x) < min_points:
        return None
    fit = stats.linregress(np.log(x), np.log(y))
    n = len(x)
    half = stats.t.ppf(0.5 + level / 2, n - 2) * fit.stderr if n > 2 else np.nan
    return PowerLaw(float(fit.slope), float(fit.slope - half), float(fit.slope + half),
                    float(np.exp(fit.intercept)), n, level)


def _slowest(times: list[int | None]) -> int | None:
    """The latest of some steps; None when empty or when any of them never happened."""
    return None if not times or any(t is None for t in times) else max(times)


def sweep_row(cfg: RunConfig, traj: Trajectory, probs: np.ndarray, status: str = "completed",
              diverged_at: int | None = None, phases: dict | None = None) -> dict[str, Any]:
    """The per-run quantities stored in sweep.parquet (features 0-based; steps are logged steps).

    Groups follow :mod:`phases`: a dominant feature exists for imbalanced data (and for custom data with a
    unique most probable feature); every other feature is 'minor', and with no dominant feature (balanced)
    all features are, so ``time_to_eps_minor`` is then the slowest feature. Phase boundaries are
    ``<group>_phase_<name>_end`` (group: dominant | minor | balanced), the slowest feature of the group.
    """
    if not has_features(traj):
        return {"status": status, "diverged_at": diverged_at, "setting": "no features",
                "final_step": int(traj.steps[-1]), "final_loss": float(traj.loss[-1]),
                "time_to_eps_loss": first_step_below(traj.steps, traj.loss, cfg.eps)}
    phases = phases or detect_phases(traj, probs, cfg.eps, setting_name(cfg.data))
    dom = [f["feature"] for f in phases["features"] if f["group"] == "dominant"]
    minor = [f["feature"] for f in phases["features"] if f["group"] != "dominant"]
    tte = time_to_eps(traj, cfg.eps)
    final_fl = traj.feature_loss[-1]
    own = np.diagonal(traj.attention[-1])
    row: dict[str, Any] = {
        "status": status,
        "diverged_at": diverged_at,
        "setting": phases["setting"],
        "final_step": int(traj.steps[-1]),
        "final_loss": float(traj.loss[-1]),
        "final_loss_dominant": float(final_fl[dom[0]]) if dom else None,
        "final_loss_minor": float(max(final_fl[k] for k in minor)),
        "time_to_eps_loss": first_step_below(traj.steps, traj.loss, cfg.eps),
        "time_to_eps_dominant": tte[dom[0]] if dom else None,
        "time_to_eps_minor": _slowest([tte[k] for k in minor]),
        "minor_converged_frac": float(np.mean([tte[k] is not None for k in minor])),
        "final_attention_own": float(own.mean()),
        "final_attention_leak": float(np.mean(1.0 - own)),  # mean_k (1 - attention[k, k])
    }
    ends: dict[str, list] = defaultdict(list)
    for feat in phases["features"]:
        for ph in feat["phases"]:
            name = re.sub(r"\W+", "_", str(ph["name"])).strip("_")
            ends[f"{feat['group']}_phase_{name}_end"].append(ph["end"])
    row.update({k: _slowest(v) for k, v in ends.items()})
    return row


def config_columns(cfg: RunConfig) -> dict[str, Any]:
    """Every config value under its dotted key; lists (explicit probs) as JSON strings."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(cfg.to_dict()).items()}

