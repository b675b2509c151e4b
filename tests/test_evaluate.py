"""evaluate.py and the ``evaluate`` command: a run's parameters on another distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

import helpers as H
from icl_dynamics.cli import main
from icl_dynamics.storage import load_run

pytestmark = pytest.mark.user_defaults

TRAIN = ["--set", "data.num_features=3", "--set", "data.prompt_length=6", "--set", "data.probs=[0.6,0.3,0.1]",
         "--set", "train.steps=200", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev") / "run"
    assert main(["train", *TRAIN, "--out", str(out)]) == 0
    return out


def test_on_the_training_distribution_it_gives_the_final_metrics(run_dir, tmp_path, capsys):
    """The same observation of the same parameters (jitted alone instead of inside the training scan):
    equal to round-off, 1e-12."""
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    t = load_run(run_dir).trajectory
    assert abs(res["loss"] - t.loss[-1]) < 1e-12
    np.testing.assert_allclose(res["feature_loss"], t.feature_loss[-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["attention"], t.attention[-1], rtol=0, atol=1e-12)


def test_out_of_distribution_matches_an_independent_enumeration(run_dir, tmp_path, capsys):
    """Trained on p = (0.6, 0.3, 0.1), N = 6; evaluated on balanced p with N = 9: the feature losses and the
    loss equal the numpy enumeration (tests/helpers.py) at the trained scores, to 1e-12."""
    assert main(["evaluate", str(run_dir), "--set", "data.probs=balanced", "--set", "data.prompt_length=9",
                 "--out", str(tmp_path / "ood.json")]) == 0
    res = json.loads((tmp_path / "ood.json").read_text())
    S = load_run(run_dir).trajectory.scores[-1]
    p = np.full(3, 1 / 3)
    counts, weights = H.exact_table(9, p)
    want = H.feature_loss(S, counts, weights)
    np.testing.assert_allclose(res["feature_loss"], want, rtol=0, atol=1e-12)
    assert abs(res["loss"] - p @ want) < 1e-12
    assert res["config_changes"] == {"data.probs": "balanced", "data.prompt_length": 9}


def test_bad_evaluations_are_one_line(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir), "--set", "data.num_features=4", "--set", "data.probs=balanced"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit" in err[0] and "(3, 3)" in err[0]
    bare = tmp_path / "bare"
    assert main(["train", *TRAIN, "--out", str(bare)]) == 0
    (bare / "params.npz").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(bare)]) == 2
    assert "has no params.npz" in capsys.readouterr().err


@pytest.mark.parametrize("engine_args", [
    [],  # population: the logged scores are the parameters
    ["--set", "train.engine=tokens", "--set", "data.dim=5", "--set", "train.batch_size=32",
     "--set", "train.eval_prompts=64"],  # tokens, d > K: Q rebuilt from the logged scores (V A V^T)
])
def test_eval_block_logs_the_curves_evaluate_gives_at_the_end(engine_args, tmp_path, capsys):
    """train's eval: block evaluates every logged row on another distribution; its last row equals
    ``evaluate`` of the saved final parameters on that distribution (two routes to the same numbers: the
    parameters rebuilt from the log against params.npz), to 1e-10."""
    out = tmp_path / "run"
    assert main(["train", *TRAIN, *engine_args, "--set", "eval={data.probs: balanced, data.prompt_length: 9}",
                 "--out", str(out)]) == 0
    with np.load(out / "eval_trajectory.npz") as z:
        ev_loss, ev_fl, steps = z["loss"], z["feature_loss"], z["steps"]
    assert np.array_equal(steps, load_run(out).trajectory.steps)
    assert main(["evaluate", str(out), "--set", "data.probs=balanced", "--set", "data.prompt_length=9",
                 "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert abs(ev_loss[-1] - res["loss"]) < 1e-10
    np.testing.assert_allclose(ev_fl[-1], res["feature_loss"], rtol=0, atol=1e-10)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["engine"]["eval"]["final_loss"] - res["loss"]) < 1e-10


@pytest.mark.parametrize("sets, words", [(["eval={data.num_features: 4}"], "cannot change"),
                                         (["eval={train.lr: 2}"], "cannot change"),
                                         (["eval={data.probs: balanced}", "train.engine=transformer"], "evaluate")])
def test_bad_eval_blocks_are_one_line(sets, words, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'eval'" in err[0] and words in err[0] and not (tmp_path / "r").exists()
