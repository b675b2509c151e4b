"""The command line: a train -> plot round trip, and one clear line (exit 2) for every kind of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from icl_dynamics.cli import main
from icl_dynamics.config import load_config
from icl_dynamics.storage import load_run

pytestmark = pytest.mark.user_defaults  # end to end: the package must turn float64 on by itself

TINY = ["--set", "data.num_features=3", "--set", "data.prompt_length=16", "--set", "data.probs=imbalanced",
        "--set", "data.dominant_prob=0.6", "--set", "train.expectation=mean_field", "--set", "train.lr=4",
        "--set", "train.steps=150", "--set", "eps=1e-2"]


def test_train_then_plot_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    for name in ("config.yaml", "manifest.json", "trajectory.npz", "metrics.parquet", "summary.json"):
        assert (out / name).is_file(), name

    run = load_run(out)
    K, t = 3, run.trajectory
    T = len(t.steps)
    assert t.steps[0] == 0 and t.steps[-1] == 150 and np.all(np.diff(t.steps) > 0)
    assert t.loss.shape == (T,) and t.feature_loss.shape == (T, K)
    assert t.scores.shape == (T, K, K) and t.attention.shape == (T, K, K)
    np.testing.assert_allclose(run.probs, [0.6, 0.2, 0.2], rtol=1e-15)
    np.testing.assert_allclose(t.loss, t.feature_loss @ run.probs, rtol=1e-12)
    np.testing.assert_allclose(t.attention.sum(-1), 1.0, rtol=1e-12)  # the query is not in the softmax

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    want = []
    for k in range(K):  # first logged step with feature_loss <= eps, recomputed here
        hit = [int(s) for s, v in zip(t.steps, t.feature_loss[:, k]) if v <= 1e-2]
        want.append(hit[0] if hit else None)
    assert summary["time_to_eps"] == want and want[0] is not None  # the dominant feature gets there
    assert summary["final_loss"] == pytest.approx(float(t.loss[-1]), rel=1e-15)

    df = pd.read_parquet(out / "metrics.parquet")
    assert {"step", "feature", "feature_loss", "attention_on_own_feature"} <= set(df.columns)
    assert len(df) == T * K
    last = df[df.step == 150].sort_values("feature")
    np.testing.assert_allclose(last.feature_loss, t.feature_loss[-1], rtol=1e-15)
    np.testing.assert_allclose(last.attention_on_own_feature, np.diag(t.attention[-1]), rtol=1e-15)

    cfg = load_config(out / "config.yaml")
    assert cfg.hash() == load_config(None, TINY[1::2]).hash()
    assert json.loads((out / "manifest.json").read_text())["config_hash"] == cfg.hash()

    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    figs = sorted((out / "figures").glob("*.png"))
    assert len(figs) >= 4 and sorted(map(str, figs)) == sorted(p for p in printed if p.endswith(".png"))
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 2000 for f in figs)


def _one_error_line(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (argv, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.mark.parametrize("sets,key", [
    (["data.num_features=5", "data.dim=3"], "data.dim"),  # K > d
    (["data.num_features=3", "data.probs=[-0.2,0.7,0.5]"], "data.probs"),  # negative probability
    (["data.num_features=3", "data.probs=[0.5,0.3,0.1]"], "data.probs"),  # not summing to 1
    (["train.lr=0"], "train.lr"),
    (["train.lr=-0.5"], "train.lr"),
    (["data.prompt_length=0"], "data.prompt_length"),  # N < 1
    (["data.colour=red"], "data.colour"),  # unknown key
    (["train.steps=ten"], "train.steps"),  # wrong type
    (["model.include_query_in_softmax=3"], "model.include_query_in_softmax"),
    (["train.expectation=enumerate"], "train.expectation"),  # C(271, 15) count vectors at the defaults
])
def test_bad_config_is_one_line_exit_2(sets, key, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    line = _one_error_line(capsys, argv, f"'{key}'")
    if key == "train.expectation":
        assert f"{math.comb(256 + 15, 15):,}" in line and "train.expectation=exact" in line
    assert not (tmp_path / "r").exists()  # nothing is created for a bad config


def test_bad_run_dirs_and_arguments(tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    _one_error_line(capsys, ["train", *TINY, "--out", str(occupied), "--quiet"], "not made by icl-dynamics",
                    "choose a new --out")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    _one_error_line(capsys, ["plot", str(tmp_path / "missing")], str(tmp_path / "missing"), "does not exist")
    _one_error_line(capsys, ["train", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")],
                    "none.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("data: {num_features: [\n")
    _one_error_line(capsys, ["train", "--config", str(bad_yaml), "--out", str(tmp_path / "o")], "bad.yaml")
    _one_error_line(capsys, ["train", "--set", "noequals", "--out", str(tmp_path / "o")], "noequals")
    _one_error_line(capsys, ["frobnicate"], "frobnicate")
    assert main([]) == 2  # no command: the usage on stdout, one error line (issue 13: it printed no usage)
    cap = capsys.readouterr()
    assert cap.out.startswith("usage: icl-dynamics") and "train" in cap.out
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "give a command" in err[0]


def test_the_cli_explains_itself(tmp_path, capsys):
    """Issue 13: train --help lists every config key with its meaning; config show prints the resolved
    config (overrides applied, d tied to K) with comments."""
    from icl_dynamics.commands.config import described_keys

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key, meaning in described_keys():
        assert key in out and meaning, key
    assert main(["config", "show", "--set", "data.num_features=8"]) == 0
    shown = capsys.readouterr().out
    assert "num_features: 8  # K, the number of orthonormal features" in shown and "dim: 8" in shown


def test_explore_writes_one_offline_page_for_a_run_and_a_sweep(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--quiet"]) == 0
    assert main(["explore", str(run), "--out", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    assert "loss-plot" in page and "heatmap-plot" in page and "<script src=" not in page
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {data.prompt_length: 16, train.steps: 20, train.expectation: mean_field}\n"
                    "grid: {data.num_features: [2, 3], train.lr: [0.5, 1.0]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw"), "--workers", "1", "--quiet"]) == 0
    assert main(["explore", str(tmp_path / "sw"), "--y", "train.lr", "--value", "final_loss"]) == 0
    assert "sweep-plot" in (tmp_path / "sw" / "explore.html").read_text()
    assert main(["explore", str(run), "--x", "train.lr"]) == 2  # --x is for sweeps: one line
