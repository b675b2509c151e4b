"""The claim registry and the criteria of reproduce, on measurements whose truth is known: laws the claim
states pass, laws it rejects fail, and the controls' kind of settings fail. (The quick run's own claims and
controls are checked in test_reproduce.py.)"""

import math

import numpy as np
import pytest

from icl_dynamics.config import RunConfig, with_overrides
from icl_dynamics.engines import build_engine
from icl_dynamics.reproduce import CLAIMS, ClaimResult, Control, evaluate, register, registry
from icl_dynamics.reproduce.claims import balanced_two_phases, speed_profile, two_phase_input
from icl_dynamics.reproduce.findings import finite_N_floor, four_phase_threshold
from icl_dynamics.reproduce.machinery import geometric_schedule
from icl_dynamics.reproduce.orders import (SATURATION, exact_test, local_exponents, order_test, time_uncertainty,
                                           with_law)
from icl_dynamics.trainer import train

K_SWEEP = [8, 16, 32, 64, 128, 256]


def test_every_claim_declares_source_criterion_and_controls():
    assert len(CLAIMS) == 9
    for c in CLAIMS.values():
        assert c.kind in ("paper", "finding") and c.source and c.criterion and c.statement
        assert c.controls and all(ctl.setting and ctl.why_false for ctl in c.controls)
    with pytest.raises(ValueError, match="negative control"):
        register("no_control", statement="s", source="s", criterion="c", controls=[])


def test_a_new_claim_is_one_function_plus_a_registration(monkeypatch):
    monkeypatch.setattr(registry, "CLAIMS", {})

    @register("positive", statement="x > 0", source="test", criterion="x > 0",
              controls=[Control("negative", "x = -1", "-1 is not positive", lambda r: {"x": -1.0})])
    def positive(m):
        return ClaimResult(m["x"] > 0, {"x": m["x"]}, f"x = {m['x']}")

    (row,) = evaluate({"measurements": {"positive": {"x": 2.0}}})
    assert row["passed"] is True and row["measured"] == {"x": 2.0}
    assert [c["passed"] for c in row["controls"]] == [False]


def test_time_uncertainty_and_local_exponents():
    steps = np.array([0, 1, 2, 3, 100, 110])
    assert time_uncertainty(steps, 105.0) == 5.0  # half the logged interval around the crossing
    assert time_uncertainty(steps, 2.5) == 1.0  # at least one step
    x = np.array(K_SWEEP, float)
    loc = local_exponents(x, 3 * x**1.5, [1.0] * len(x))
    assert all(abs(e["b"] - 1.5) < 1e-12 for e in loc)
    e = loc[0]  # (u0/t0 + u1/t1) / ln 2
    assert e["u"] == pytest.approx((1 / (3 * 8**1.5) + 1 / (3 * 16**1.5)) / math.log(2), rel=1e-12)
    down = local_exponents([1e-2, 1e-3, 1e-4], [1e2, 1e3, 1e4], [1, 1, 1], toward="small")
    assert [d["x_lo"] for d in down] == [1e-2, 1e-3] and all(abs(d["b"] + 1) < 1e-12 for d in down)


def _order(t, b, x=K_SWEEP, toward="large"):
    return order_test(x, list(t), [1.0] * len(x), b, toward)


def test_order_test_accepts_the_order_with_corrections():
    K = np.array(K_SWEEP, float)
    # Phase I's form, K^2 (1 + c log K / K): local exponents approach 2 from below
    assert _order(K**2 * (1 + 3 * np.log(K) / K), 2)["passed"]
    assert _order(70 * (1 - 1 / K), 0)["passed"]  # levels off: independent of K
    eps = np.geomspace(1e-2, 1e-4, 9)
    assert _order(10 / eps * (1 - np.sqrt(eps)), -1, eps, "small")["passed"]


@pytest.mark.parametrize("law, b", [(1.5, 2), (2.5, 2), (0.3, 0), (-0.3, 0)])
def test_order_test_rejects_other_laws(law, b):
    K = np.array(K_SWEEP, float)
    res = _order(K**law, b)
    assert not res["passed"] and not res["approach"]  # constant local exponents do not approach b
    assert res["change_per_doubling"] == pytest.approx(2 ** abs(law - b) - 1, rel=1e-9)
    assert res["change_per_doubling"] > SATURATION


def test_order_test_rejects_a_drift_away_and_too_few_points():
    K = np.array(K_SWEEP, float)
    assert not _order(K**2 * (1 + K / 1000), 2)["passed"]  # local exponents leave 2 as K grows
    res = _order([10, 20, None, None, None, None], 1)
    assert not res["passed"] and "fewer" in res["note"]


def test_exact_test_uses_the_interval():
    lr = [0.25, 0.5, 1.0, 2.0, 4.0]
    t = [900 / r + 1.0 for r in lr]  # 1/lr plus a step of discreteness
    res = exact_test(lr, t, [1.0] * 5, -1.0)
    assert res["passed"] and res["nearest"]["x_hi"] == 0.25
    assert not exact_test(lr, with_law(lr, t, -0.7), [1.0] * 5, -1.0)["passed"]
    assert with_law([1, 2, 4], [None, 10.0, 3.0], -1) == pytest.approx([20.0, 10.0, 5.0], rel=1e-12)


def _attention(a0: float, steps: int, K: int) -> np.ndarray:
    """The balanced mean-field own attention by Euler steps of its flow (spec section 5): the speed is
    proportional to a^2 (1 - a)^3, largest at a = 2/5."""
    a = [a0]
    for _ in range(steps):
        a.append(a[-1] + 4.0 / K * a[-1] ** 2 * (1 - a[-1]) ** 3)
    return np.array(a)


def test_speed_profile_separates_one_and_two_phases():
    s = np.arange(20001)
    two = _attention(1 / 16, 20000, 16)
    loss = 0.5 * (1 - two) ** 2
    p = speed_profile(s, two, loss, 1e-2)
    assert p["accel"] > 5 and p["decel"] > 5 and abs(p["attention_at_max_speed"] - 0.4) < 0.01
    one = _attention(0.5, 20000, 16)
    assert speed_profile(s, one, 0.5 * (1 - one) ** 2, 1e-2)["accel"] == pytest.approx(1.0, abs=1e-12)


def _mean_field(K: int, steps: int):
    cfg = with_overrides(RunConfig(), {"data.num_features": K, "data.probs": "balanced",
                                       "train.expectation": "mean_field"})
    return train(build_engine(cfg), geometric_schedule(steps), progress=False).trajectory


def test_two_phase_claim_on_runs():
    assert balanced_two_phases(two_phase_input(_mean_field(8, 800), 1e-2, "K = 8")).passed
    control = balanced_two_phases(two_phase_input(_mean_field(2, 200), 1e-2, "K = 2"))
    assert not control.passed and control.measured["accel"]["max"] < 2  # K = 2: no slow first phase


def _cells(shift: float) -> dict:
    cells = [{"K": K, "p1": r / math.sqrt(K), "rise": max(0.0, r - shift) * 1e-2}
             for K in (4, 9, 16) for r in (0.6, 0.9, 0.95, 1.05, 1.1, 1.6)]
    return {"label": "synthetic", "cells": cells}


def test_threshold_finding():
    assert four_phase_threshold(_cells(1.0)).passed
    assert not four_phase_threshold(_cells(1.07)).passed  # boundary moved past the bracket
    bad = _cells(1.0)
    bad["cells"][0]["rise"] = 1e-3  # a rise below a no-rise point: not one boundary
    assert not four_phase_threshold(bad).passed


def test_floor_finding():
    row = {"N": 40, "settled": 0.01136, "u": 5e-5, "formula": 0.011361, "lower": 0.00739, "upper": 0.01478,
           "E_sum_a2_absent": 0.54}
    good = {"label": "synthetic", "feature": 1, "p_k": 0.1, "rows": [row]}
    assert finite_N_floor(good).passed
    assert not finite_N_floor({**good, "rows": [{**row, "settled": 0.0115}]}).passed  # 2.8 u off the formula
    assert not finite_N_floor({**good, "rows": [{**row, "settled": 0.007, "formula": 0.007}]}).passed
