"""measures.py: the one power-law fit, summaries, the sweep row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from icl_dynamics.config import load_config
from icl_dynamics.data import feature_probs
from icl_dynamics.measures import GREW, fit_power_law, summarize, sweep_row
from icl_dynamics.storage import load_run
from icl_dynamics.trainer import run_training


def test_fit_recovers_an_exact_power_law():
    """y = 3 x^-1.5 exactly: the fit is exact to round-off (1e-12) with a zero-width interval."""
    x = np.array([2.0, 4, 8, 16, 32])
    f = fit_power_law(x, 3 * x ** -1.5)
    assert abs(f.exponent + 1.5) < 1e-12 and abs(f.prefactor - 3) < 1e-10 and f.hi - f.lo < 1e-9


def test_fit_interval_covers_at_its_level():
    """Lognormal noise (sd 0.1) on y = x^2, 6 points: the 95% t-interval covers 2 in 95% +- 3 sd of 400
    trials (binomial sd of the coverage ~1.1%: [91.7%, 98.3%])."""
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 100, 6)
    hits = sum(f.lo <= 2 <= f.hi for f in (fit_power_law(x, x ** 2 * np.exp(rng.normal(0, 0.1, 6)))
                                               for _ in range(400)))
    assert 0.917 <= hits / 400 <= 0.983
    assert stats.t.ppf(0.975, 4) > 2  # small samples: wider than the normal interval


def test_fit_refuses_what_it_cannot_fit():
    assert fit_power_law([1, 1, 1], [1, 2, 3]) is None  # one distinct x
    assert fit_power_law([1, 2], [1, 2], min_points=3) is None
    assert fit_power_law([1, 2, -3, np.nan], [1, 2, 3, 4]).n == 2  # non-positive and NaN points are dropped


@pytest.fixture(scope="module")
def run():
    cfg = load_config(None, ["data.num_features=4", "data.prompt_length=64", "train.expectation=mean_field",
                             "train.steps=600", "train.log_every=1"])
    return cfg, run_training(cfg, progress=False).trajectory


def test_summary_and_sweep_row_agree_with_the_trajectory(run):
    cfg, t = run
    s = summarize(t, cfg.eps)
    row = sweep_row(cfg, t, feature_probs(cfg.data))
    first = [int(t.steps[np.argmax(t.feature_loss[:, k] <= cfg.eps)]) for k in range(4)]
    assert s["time_to_eps"] == first  # log_every = 1: the first step below eps, exactly
    assert row["time_to_eps_dominant"] == first[0] and row["time_to_eps_minor"] == max(first[1:])
    assert row["final_loss"] == float(t.loss[-1]) and row["setting"] == "imbalanced"


@pytest.mark.parametrize("lr, flagged", [(1.0, True), (0.01, False)])
def test_a_slow_blow_up_is_flagged_not_called_fine(lr, flagged, tmp_path, capsys):
    """Gaussian tokens with linear attention at lr = 1 (d = 4, N = 16) grow the loss by ~1e11 with every
    update finite, so the run ends 'completed'; summary.json and the command then carry a warning. At
    lr = 0.01 (the control) the loss falls and no warning is written."""
    from icl_dynamics.cli import main

    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--quiet", "--set", "train.engine=transformer", "--set",
                 "data.tokens=gaussian", "--set", "model.attention=linear", "--set", "data.num_features=4",
                 "--set", "data.prompt_length=16", "--set", "train.steps=100", "--set", "train.batch_size=32",
                 "--set", f"train.lr={lr}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert ("warnings" in summary) == flagged
    assert ("warning: the loss grew" in capsys.readouterr().err) == flagged
    assert (summary["final_loss"] > GREW * load_run(out).trajectory.loss[0]) == flagged
