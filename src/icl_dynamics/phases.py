"""Phase detection (spec section 6): where each query feature's training phases begin and end.

Definitions, per query feature k (``d`` is the dominant feature, 0 for the 'imbalanced' setting):

- balanced: Phase I until attention[k,k] >= 1/2; Phase II until feature_loss[k] <= eps.
- dominant: one phase, until feature_loss[d] <= eps.
- minor k: Phase I until B_{k,n} peaks (B_{k,n} = scores[k, n] averaged over the other minor features
  n not in {d, k}); Phase II until attention[k,k] > attention[k,d]; Phase III until attention[k,k] >= 1/2;
  Phase IV until feature_loss[k] <= eps.
- custom (any other probabilities): the most probable feature is dominant and the rest minor when that
  feature is unique; with a tie at the top every feature gets the balanced definitions.

Each event is searched only after the previous boundary, so the phases are ordered by construction; once an
event is not reached, the later phases have ``start``/``end`` null.

Robustness to noisy (tokens-engine) trajectories:

- Threshold crossings use persistence with hysteresis: a crossing counts only if the quantity stays on the
  crossed side, up to a band (``ATTN_BAND`` for attention, a factor ``LOSS_BAND`` for the loss), for the
  next ``PERSIST`` fraction of the step count (and at least ``PERSIST_ROWS`` logged rows). The crossing
  step is then interpolated linearly between the two logged rows around it (in log-loss for the loss), and
  ``end`` is the first integer step at or after it: on a log with every step, exactly the first step at
  which the event holds.
- Peaks are looked for on a smoothed curve: the series is resampled on a uniform grid of ln(1 + step) and
  smoothed there by a Savitzky-Golay filter (quadratic, window ``SMOOTH_WIDTH`` in ln-step, i.e. about
  +-7% of the step), so the window scales with the step as the dynamics do. The maximum is refined by a
  parabola through its grid neighbours. A peak counts only if the smoothed curve later falls by at least
  ``PEAK_DROP`` of its rise (otherwise it is still rising: not reached).

Features are 0-based in the JSON (``"feature": 0`` is v_1 of the paper); text for people is 1-based.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.signal import savgol_filter

from .errors import UserError
from .data import setting_of
from .trajectory import Trajectory

PERSIST = 0.1
PERSIST_ROWS = 2
ATTN_BAND = 0.05
LOSS_BAND = 1.5
SMOOTH_WIDTH = 0.15
PEAK_DROP = 0.05
NAMES = ("I", "II", "III", "IV")
SETTINGS = ("balanced", "imbalanced", "custom")


def dominant_feature(probs: np.ndarray, setting: str) -> int | None:
    """The dominant feature (0-based) under ``setting``, or None when the balanced definitions apply."""
    p = np.asarray(probs, np.float64)
    if setting == "balanced" or len(p) < 2:
        return None
    if setting == "imbalanced":
        return 0
    top = int(np.argmax(p))
    return top if np.sum(np.isclose(p, p[top], rtol=1e-9, atol=0)) == 1 else None


def crossing(steps: np.ndarray, x: np.ndarray, threshold: float, band: float, start: float = 0.0) -> float | None:
    """First step >= ``start`` at which ``x`` rises to ``threshold`` and stays above ``threshold - band``
    for the persistence window; linearly interpolated between logged rows. None if it never does.

    steps (T,) increasing, x (T,). For a downward event pass -x and -threshold.
    """
    steps = np.asarray(steps, np.float64)
    x = np.asarray(x, np.float64)
    ok = x >= threshold
    relaxed = x >= threshold - band
    rows = np.flatnonzero(steps >= start)
    for i in rows[ok[rows]]:
        if i > rows[0] and ok[i - 1]:
            continue  # inside a run of rows already above: only up-crossings are candidates
        if i + PERSIST_ROWS > len(x) - 1:
            break  # too close to the end to show persistence: not (yet) an event
        last = max(np.searchsorted(steps, steps[i] * (1 + PERSIST), side="right") - 1, i + PERSIST_ROWS)
        if not relaxed[i + 1: last + 1].all():
            continue
        if i == 0 or x[i - 1] >= threshold:
            return max(float(steps[i]), start)
        s0, s1, x0, x1 = steps[i - 1], steps[i], x[i - 1], x[i]
        return max(float(s0 + (threshold - x0) / (x1 - x0) * (s1 - s0)), start)
    return None


def smooth(steps: np.ndarray, x: np.ndarray, width: float = SMOOTH_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(u, xs): x resampled on a uniform grid u of ln(1 + step) and Savitzky-Golay smoothed (quadratic,
    window ``width`` in u). Shapes (G,)."""
    u_obs = np.log1p(np.asarray(steps, np.float64))
    h = width / 8
    u = np.linspace(u_obs[0], u_obs[-1], max(int(math.ceil((u_obs[-1] - u_obs[0]) / h)) + 1, 2))
    xi = np.interp(u, u_obs, x)
    window = min(9, len(u) - (1 - len(u) % 2))
    if window < 3:
        return u, xi
    return u, savgol_filter(xi, window, 2, mode="interp")


def peak(steps: np.ndarray, x: np.ndarray, start: float = 0.0) -> float | None:
    """Step of the maximum of smoothed ``x`` at steps >= start; None while still rising (see module doc)."""
    u, xs = smooth(steps, x)
    sel = np.flatnonzero(u >= np.log1p(start) - 1e-12)
    if sel.size < 3:
        return None
    i = sel[np.argmax(xs[sel])]
    rise = xs[i] - xs[sel[0]]
    scale = max(rise, np.ptp(xs[sel]), 1e-12)
    if xs[i] - xs[sel[-1]] < PEAK_DROP * scale:
        return None  # never falls back: the peak is not reached within the run
    ui = u[i]
    if sel[0] < i < sel[-1]:  # vertex of the parabola through the three grid points
        y0, y1, y2 = xs[i - 1], xs[i], xs[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            ui += 0.5 * (y0 - y2) / den * (u[1] - u[0])
    return max(float(np.expm1(ui)), start)


def _event_step(t: float | None, rounding: str) -> int | None:
    if t is None:
        return None
    return int(math.ceil(t - 1e-9)) if rounding == "ceil" else int(round(t))


def _chain(events: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Phases from ordered events; each event is (text, fn(start) -> (time, rounding)). A phase starts
    where the previous one ended; the next event is searched from the previous (unrounded) time."""
    phases, t, start = [], 0.0, 0
    for name, (text, fn) in zip(NAMES, events):
        if t is None:
            phases.append({"name": name, "start": None, "end": None, "event": text})
            continue
        t, rounding = fn(t)
        end = _event_step(t, rounding)
        phases.append({"name": name, "start": start, "end": end, "event": text})
        start = end
    return phases


def loss_crossing(steps: np.ndarray, loss: np.ndarray, eps: float, start: float = 0.0) -> float | None:
    """First (interpolated) step >= start with loss <= eps, persistent up to the factor ``LOSS_BAND``.
    Works in log10: the loss decays over decades, and the band becomes a factor."""
    lx = -np.log10(np.maximum(np.asarray(loss, np.float64), 1e-300))
    return crossing(steps, lx, -math.log10(eps), math.log10(LOSS_BAND), start)


def _loss_event(traj: Trajectory, k: int, eps: float):
    return ("feature_loss[k] <= eps", lambda s: (loss_crossing(traj.steps, traj.feature_loss[:, k], eps, s), "ceil"))


def _half_event(traj: Trajectory, k: int):
    return ("attention[k,k] >= 1/2",
            lambda s: (crossing(traj.steps, traj.attention[:, k, k], 0.5, ATTN_BAND, s), "ceil"))


def _minor_events(traj: Trajectory, k: int, d: int, eps: float):
    K = traj.scores.shape[1]
    others = [n for n in range(K) if n not in (d, k)]

    def phase1(s):
        if not others:  # K = 2: no other minor feature, so no B_{k,n}: Phase I is empty
            return s, "round"
        return peak(traj.steps, traj.scores[:, k, others].mean(-1), s), "round"

    gap = traj.attention[:, k, k] - traj.attention[:, k, d]
    return [
        ("B_{k,n} peaks (mean over the other minor features n)", phase1),
        (f"attention[k,k] > attention[k,{d}]", lambda s: (crossing(traj.steps, gap, 0.0, ATTN_BAND, s), "ceil")),
        _half_event(traj, k),
        _loss_event(traj, k, eps),
    ]


def detect_phases(traj: Trajectory, probs: np.ndarray, eps: float, setting: str | None = None) -> dict:
    """Phase boundaries of every query feature.

    traj: a :class:`Trajectory` (steps (T,), feature_loss (T,K), scores (T,K,K), attention (T,K,K));
    probs (K,); eps the target per-feature loss; setting 'balanced' | 'imbalanced' | 'custom' (None: from
    probs). Returns ``{"setting", "eps", "features": [{"feature", "group", "phases": [{"name", "start",
    "end", "event"}]}]}`` with 0-based features and integer (or null) steps.
    """
    probs = np.asarray(probs, np.float64)
    K = traj.feature_loss.shape[1]
    if probs.shape != (K,):
        raise UserError(f"probs has shape {probs.shape}, expected ({K},) for this trajectory")
    if not 0 < eps < 1:
        raise UserError(f"eps must be in (0, 1), got {eps}")
    setting = setting or setting_of(probs)
    if setting not in SETTINGS:
        raise UserError(f"unknown setting '{setting}'; expected one of {', '.join(SETTINGS)}")
    d = dominant_feature(probs, setting)
    features = []
    for k in range(K):
        if d is None:
            group, events = "balanced", [_half_event(traj, k), _loss_event(traj, k, eps)]
        elif k == d:
            group, events = "dominant", [_loss_event(traj, k, eps)]
        else:
            group, events = "minor", _minor_events(traj, k, d, eps)
        features.append({"feature": k, "group": group, "phases": _chain(events)})
    return {"setting": setting, "eps": float(eps), "features": features}


def boundaries(result: dict, feature: int) -> list[int | None]:
    """The end steps of one feature's phases (0-based feature index)."""
    return [p["end"] for p in result["features"][feature]["phases"]]


def describe(result: dict) -> str:
    """A short text table for people (1-based features)."""
    lines = [f"setting {result['setting']}, eps {result['eps']:g} (features 1-based)"]
    for f in result["features"]:
        ends = ", ".join(f"{p['name']} ends {p['end'] if p['end'] is not None else 'not reached'}"
                         for p in f["phases"])
        lines.append(f"feature {f['feature'] + 1} ({f['group']}): {ends}")
    return "\n".join(lines)
