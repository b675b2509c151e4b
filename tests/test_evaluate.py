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
    assert len(err) == 1 and "do not match the evaluation config" in err[0] and "Q (3, 3)" in err[0]
    bare = tmp_path / "bare"
    assert main(["train", *TRAIN, "--out", str(bare)]) == 0
    (bare / "params.npz").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(bare)]) == 2
    assert "has no params.npz" in capsys.readouterr().err


@pytest.mark.parametrize("engine_args", [
    [],  # population
    ["--set", "train.method=flow"],  # the gradient flow: the watch observes the solver's saved states
    ["--set", "train.engine=tokens", "--set", "data.dim=5", "--set", "train.batch_size=32",
     "--set", "train.eval_prompts=64"],  # tokens, d > K
    ["--set", "train.engine=transformer", "--set", "model.params=full", "--set", "model.init_scale=0.1",
     "--set", "train.batch_size=32", "--set", "train.eval_prompts=64"],  # the literal model, W^{PV} trained
])
def test_eval_block_logs_the_curves_evaluate_gives_at_the_end(engine_args, tmp_path, capsys):
    """train's eval: block evaluates every logged row on another distribution, inside the training scan; its
    last row equals ``evaluate`` of the saved final parameters on that distribution (the same observation of
    the same parameters, compiled in another program), to 1e-10."""
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
                                         (["eval.data.probs=nonsense"], "data.probs"),
                                         (["eval={data.token_noise: 0.2}"], "train.engine=transformer")])
def test_bad_eval_blocks_are_one_line(sets, words, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'eval'" in err[0] and words in err[0] and not (tmp_path / "r").exists()


def test_eval_block_nested_and_dotted_are_one_config(tmp_path):
    """eval: {data: {probs: ...}} (nested YAML), --set eval.data.probs=... and {data.probs: ...} give the same
    validated config (so the same hash and run)."""
    from icl_dynamics.config import load_config

    (tmp_path / "c.yaml").write_text("eval:\n  data:\n    probs: balanced\n    prompt_length: 9\n")
    a = load_config(tmp_path / "c.yaml")
    b = load_config(None, ["eval.data.probs=balanced", "eval.data.prompt_length=9"])
    c = load_config(None, ["eval={data.probs: balanced, data.prompt_length: 9}"])
    assert a.eval == b.eval == c.eval == {"data.probs": "balanced", "data.prompt_length": 9}
    assert a.hash() == b.hash() == c.hash()


def test_a_population_run_evaluated_by_the_transformer_engine(run_dir, tmp_path):
    """The paper's Q moves between its two forms ((d, d) and the transformer's {"Q": (1, d, d)}), so a
    population run can be evaluated where only the literal model computes (token noise). Without noise the
    transformer's estimate equals the exact loss within 5 standard errors of its evaluation prompts (the
    engine reports that error); with token noise 0.3 the loss rises above that band."""
    out = tmp_path / "e.json"
    sets = ["--set", "train.engine=transformer", "--set", "train.eval_prompts=4000"]
    exact = json.loads(json.dumps(load_run(run_dir).trajectory.loss[-1].item()))
    assert main(["evaluate", str(run_dir), *sets, "--out", str(out)]) == 0
    clean = json.loads(out.read_text())["loss"]
    assert main(["evaluate", str(run_dir), *sets, "--set", "data.token_noise=0.3", "--out", str(out)]) == 0
    noisy = json.loads(out.read_text())["loss"]
    from icl_dynamics.config import load_config
    from icl_dynamics.engines import build_engine, engine_spec
    from icl_dynamics.evaluate import fit_params
    from icl_dynamics.storage import load_params

    cfg = load_config(run_dir / "config.yaml", ["train.engine=transformer", "train.eval_prompts=4000"])
    e = build_engine(cfg)
    se = engine_spec("transformer").report(e, fit_params(load_params(run_dir, np.zeros((3, 3))), e.init))
    assert abs(clean - exact) < 5 * se["loss_standard_error"]
    assert noisy > exact + 5 * se["loss_standard_error"]
