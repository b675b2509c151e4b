"""Orders measured as the theory states them: local exponents along a sweep, and the tests built on them.

A statement t(x) = Theta(x^b) is asymptotic. So the tests read the local exponents (log-log slopes between
consecutive sweep points, ordered toward the asymptote: large K, small eps) and ask two things of the last
``WINDOW`` of them:

- approach: they move toward b; the last is closer to b than the first of the window, and no step moves
  away from b by more than the two uncertainties;
- saturation: t / x^b changes by at most ``SATURATION`` over the last factor 2 of x (for b = 0 this is
  "independent of K": t levels off).

Where the theory gives an exact exponent (time proportional to 1/lr in the small-step limit), the test is the
uncertainty interval of the local exponent nearest that limit, with no tolerance added.

Uncertainty of a measured time: the event happens between two logged rows and at an integer step, so a
crossing time carries +- max(1 step, half the logged interval around it). A local exponent between points
i and i+1 carries (u_i/t_i + u_{i+1}/t_{i+1}) / |ln(x_{i+1}/x_i)| (worst case, linear propagation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

WINDOW = 3
SATURATION = 0.10


def time_uncertainty(steps: np.ndarray, t: float | None) -> float | None:
    """+- of a crossing time ``t`` read off logged ``steps`` (see the module doc)."""
    if t is None:
        return None
    s = np.asarray(steps, np.float64)
    i = int(np.clip(np.searchsorted(s, t), 1, len(s) - 1))
    return max(1.0, 0.5 * float(s[i] - s[i - 1]))


def local_exponents(x, t, u, toward: str = "large") -> list[dict[str, float]]:
    """Slopes of ln t against ln x between consecutive reached points, ordered toward the asymptote
    (``toward`` 'large': increasing x; 'small': decreasing x). Each: x_lo, x_hi (the pair, in that order),
    b, u."""
    pts = [(float(a), float(b), float(c)) for a, b, c in zip(x, t, u)
           if b is not None and c is not None and b > 0 and math.isfinite(b)]
    pts.sort(key=lambda p: p[0], reverse=(toward == "small"))
    out = []
    for (x0, t0, u0), (x1, t1, u1) in zip(pts, pts[1:]):
        dl = math.log(x1 / x0)
        out.append({"x_lo": x0, "x_hi": x1, "b": math.log(t1 / t0) / dl, "u": (u0 / t0 + u1 / t1) / abs(dl)})
    return out


def order_test(x, t, u, theory: float, toward: str = "large") -> dict[str, Any]:
    """Theta(x^theory) as x goes ``toward`` its asymptote: approach and saturation over the last WINDOW local
    exponents. Returns the local exponents, the window's deviations, the change of t / x^b per factor 2
    at the end, and the verdicts."""
    loc = local_exponents(x, t, u, toward)
    res: dict[str, Any] = {"theory": theory, "local": loc, "window": WINDOW, "saturation_bound": SATURATION}
    if len(loc) < WINDOW:
        return {**res, "approach": False, "saturated": False, "passed": False, "change_per_doubling": None,
                "note": f"fewer than {WINDOW + 1} points reached"}
    win = loc[-WINDOW:]
    dev = [abs(e["b"] - theory) for e in win]
    steady = all(d1 <= d0 + e0["u"] + e1["u"] for d0, d1, e0, e1 in zip(dev, dev[1:], win, win[1:]))
    approach = bool(steady and dev[-1] < dev[0])
    change = 2.0 ** dev[-1] - 1.0
    saturated = bool(change <= SATURATION)
    return {**res, "approach": approach, "saturated": saturated, "passed": approach and saturated,
            "change_per_doubling": change, "deviations": dev}


def exact_test(x, t, u, theory: float, toward: str = "small") -> dict[str, Any]:
    """An exact exponent: ``theory`` inside [b - u, b + u] of the local exponent nearest the limit."""
    loc = local_exponents(x, t, u, toward)
    if not loc:
        return {"theory": theory, "local": loc, "passed": False, "note": "fewer than 2 points reached"}
    last = loc[-1]
    return {"theory": theory, "local": loc, "nearest": last,
            "passed": bool(last["b"] - last["u"] <= theory <= last["b"] + last["u"])}


def with_law(x, t, exponent: float) -> list[float | None]:
    """``t`` replaced by c x^exponent through its first reached point (a control: a law the claim rejects)."""
    pts = [(a, b) for a, b in zip(x, t) if b is not None]
    if not pts:
        return [None for _ in t]
    x0, t0 = pts[0]
    return [t0 * (a / x0) ** exponent for a in x]


def fmt_local(loc: list[dict[str, float]], last: int | None = None) -> str:
    """'b (x_lo-x_hi) +- u, ...' for people."""
    items = loc if last is None else loc[-last:]
    return ", ".join(f"{e['b']:.3f}±{e['u']:.3f} ({e['x_lo']:.3g}→{e['x_hi']:.3g})" for e in items)
