"""flow.py: the gradient flow, its solver events, and GD approaching it as lr -> 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icl_dynamics.cli import main
from icl_dynamics.config import load_config
from icl_dynamics.engines import build_engine
from icl_dynamics.flow import run_flow
from icl_dynamics.phases import loss_crossing
from icl_dynamics.trainer import run_training

BASE = ["data.num_features=6", "data.prompt_length=64", "train.expectation=mean_field", "data.dominant_prob=0.6"]


def test_gd_phase_times_times_lr_converge_to_the_flow_event_times():
    """GD is the explicit Euler method of the flow, first order in lr: the time to eps (interpolated between
    logged steps, times lr) approaches the flow's event time as lr -> 0 with an error proportional to lr,
    so halving lr halves it (ratios within [1.7, 2.3]: the O(lr^2) term and the interpolation between
    steps perturb the factor 2 by a few percent here)."""
    cfg = load_config(None, [*BASE, "train.method=flow", "train.steps=600"])
    _, phases, stats = run_flow(build_engine(cfg), cfg)
    flow_dom = phases["features"][0]["phases"][0]["time"]
    flow_minor = phases["features"][1]["phases"][3]["time"]
    # every gradient evaluation (trajectory and event solves) against GD's 6000 steps to t = 600 at lr = 0.1:
    # at least 5x fewer (benchmarks/exact.py measures 16x in the default setting)
    assert stats["function_evaluations"] * 5 < 6000, stats
    errors = []
    for lr in (1.0, 0.5, 0.25):
        c = load_config(None, [*BASE, f"train.lr={lr}", f"train.steps={int(600 / lr)}", "train.log_every=1"])
        t = run_training(c, progress=False).trajectory
        dom = loss_crossing(t.steps, t.feature_loss[:, 0], c.eps) * lr
        minor = loss_crossing(t.steps, t.feature_loss[:, 1], c.eps) * lr
        errors.append((abs(dom - flow_dom) / flow_dom, abs(minor - flow_minor) / flow_minor))
    for j in range(2):
        assert 1.7 < errors[0][j] / errors[1][j] < 2.3 and 1.7 < errors[1][j] / errors[2][j] < 2.3, errors
        assert errors[2][j] < 1e-2, errors


def test_flow_through_the_cli_train_phases_and_sweep(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--set", "data.num_features=3", "--set", "data.prompt_length=32", "--set", "train.expectation=mean_field",
            "--set", "train.steps=300", "--set", "train.method=flow"]
    assert main(["train", *args, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    phases = json.loads((out / "phases.json").read_text())
    assert summary["engine"]["flow"]["solver_steps"] > 0 and phases["source"].startswith("solver events")
    dom = phases["features"][0]["phases"][0]
    assert dom["end"] == int(np.ceil(dom["time"]))  # boundaries are event times, not logged rows
    assert main(["phases", str(out), "--eps", "0.02"]) == 0
    assert json.loads((out / "phases.json").read_text())["features"][0]["phases"][0]["time"] < dom["time"]
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {data.prompt_length: 32, train.expectation: mean_field, train.steps: 300, "
                    "train.method: flow}\ngrid: {data.num_features: [3]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("bad, key", [("train.flow_rtol=0", "train.flow_rtol"), ("train.flow_atol=-1", "train.flow_atol"),
                                      ("train.flow_solver=euler", "train.flow_solver"),
                                      ("train.engine=tokens", "train.method")])
def test_bad_flow_settings_are_one_line(bad, key, tmp_path, capsys):
    assert main(["train", "--set", "train.method=flow", "--set", bad, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'{key}'" in err[0] and not (tmp_path / "r").exists()
