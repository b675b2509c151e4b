"""Sweeps: spec syntax and errors, vmap vs sequential numbers, a real Dask LocalCluster, resume after kill -9,
per-run divergence, and the sweep figures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import gd
from icl_dynamics.cli import main
from icl_dynamics.data import feature_probs
from icl_dynamics.errors import SweepError
from icl_dynamics.evaluate import evaluate_run
from icl_dynamics.storage import load_run
from icl_dynamics.sweeps import expand, load_spec, load_sweep, run_sweep
from icl_dynamics.sweeps.plan import plan_batches
from icl_dynamics.sweeps.store import ROWS_DIR
from icl_dynamics.sweeps.figures import fit_power_law
from icl_dynamics.trainer import run_training

pytestmark = pytest.mark.user_defaults  # end to end: the package must turn float64 on by itself

# 8 runs in 2 vmapped batches (exact tables with N = 8; mean field), 2 seeds each. eps = 0.2 lies above the
# finite-N floor 1/2 (1 - p_k)^N <= 0.14 of every feature here (spec section 6), so every feature reaches it.
SPEC = {
    "base": {"data.num_features": 3, "data.prompt_length": 8, "train.steps": 3000, "eps": 0.2},
    "grid": {"train.expectation": ["exact", "mean_field"], "data.dominant_prob": [0.5, 0.7]},
    "seeds": 2,
    "keep_trajectories": True,
}
DERIVED = ["status", "final_loss", "final_loss_minor", "time_to_eps_loss", "time_to_eps_dominant",
           "time_to_eps_minor", "final_attention_leak", "minor_phase_IV_end"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "local"
    return out, run_sweep(SPEC, out, workers=1, progress=False)


# ------------------------------------------------------------------------------------------------ spec


def test_axis_forms_expand_to_their_definitions():
    spec = load_spec({"base": {"train.steps": 10},
                      "grid": {"train.lr": {"logspace": [0.1, 10, 3]},
                               "data.dominant_prob": {"linspace": [0.2, 0.8, 4]},
                               "data.prompt_length": {"int_logspace": [4, 64, 5]}, "seed": {"range": [1, 7, 2]}}})
    runs = expand(spec)
    assert len(runs) == 3 * 4 * 5 * 3  # the cartesian product, no duplicates among these values
    lrs = sorted({r.config.train.lr for r in runs})
    # logspace is geometric from first to last inclusive: 0.1 * 10^i (round-off of geomspace only)
    np.testing.assert_allclose(lrs, [0.1, 1.0, 10.0], rtol=1e-14)
    np.testing.assert_allclose(sorted({r.config.data.dominant_prob for r in runs}), [0.2, 0.4, 0.6, 0.8], rtol=1e-14)
    assert sorted({r.config.data.prompt_length for r in runs}) == [4, 8, 16, 32, 64]  # 4 * 2^i exactly
    assert sorted({r.config.seed for r in runs}) == list(range(1, 7, 2))  # Python range: stop excluded
    assert len({r.hash for r in runs}) == len(runs)
    # seeds: N is the axis seed = 0..N-1; equal configs collapse to one run (content addressing)
    assert [r.config.seed for r in expand(load_spec({"grid": {"eps": [0.01, 0.01]}, "seeds": 3}))] == [0, 1, 2]


def test_batches_share_shapes_and_respect_max_batch():
    spec = load_spec({"grid": {"data.num_features": [3, 4], "train.lr": [0.5, 1.0, 2.0]}, "seeds": 5,
                      "base": {"train.expectation": "mean_field"}, "max_batch": 4})
    batches = plan_batches(expand(spec), spec.max_batch)
    # 15 runs per K, split into ceil(15/4) = 4 near-equal batches (4,4,4,3); a batch never mixes K
    assert sorted(len(b.runs) for b in batches) == [3, 3, 4, 4, 4, 4, 4, 4]
    assert all(len({r.config.data.num_features for r in b.runs}) == 1 for b in batches)
    assert sum(len(b.runs) for b in batches) == 30


BAD_SPECS = [
    ({"grid": {"seed": [0]}, "colour": 1}, "unknown sweep key 'colour'"),
    ({"grid": {"data.dominant_prob": [0.5, 1.5]}}, "'data.dominant_prob'"),
    ({"grid": {"data.nonsense": [1]}}, "'data.nonsense'"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"seed": {"range": [0, 1.5]}}}, "grid 'seed': range"),
    ({"grid": {"train.lr": {"logspace": [0, 1, 3]}}}, "grid 'train.lr': logspace"),
    ({"grid": {"train.lr": []}}, "grid 'train.lr' is an empty list"),
    ({"grid": {"train.lr": 0.1}}, "grid 'train.lr' must be a list"),
    ({"base": {"train.steps": 0}, "grid": {"seed": [0]}}, "sweep base: invalid value for 'train.steps'"),
    ({"grid": {"seed": [0]}, "seeds": 2}, "not both"),
    # no grid point supplies the matrix 'gram' needs: the base is wrong at every point, so it is named
    ({"base": {"data.features": "gram"}, "grid": {"seed": [0, 1]}},
     "error: sweep base: invalid value for 'data.features': 'gram' needs data.feature_gram"),
    # the axis supplies a matrix, but one that does not fit the base's K: the grid point is named
    ({"base": {"data.features": "gram", "data.num_features": 3}, "grid": {"data.feature_gram": [[[1, 0], [0, 1]]]}},
     "error: invalid value for 'data.feature_gram': 2 x 2 but num_features is 3 (grid point data.feature_gram="),
    # a base value wrong for its key on its own is refused, even where every grid point replaces it
    ({"base": {"seed": -1}, "grid": {"seed": [0, 1]}}, "error: sweep base: invalid value for 'seed'"),
    # d = 2 fits K = 2 but not K = 3: the base is fine at one point, so the other is named
    ({"base": {"data.dim": 2, "data.num_features": 4}, "grid": {"data.num_features": [2, 3]}},
     "error: invalid value for 'data.dim': d=2 must be >= num_features K=3 (grid point data.num_features=3)"),
    # the base is complete at the first point, so the second (no matrix) is the one at fault
    ({"base": {"data.features": "gram", "data.num_features": 2}, "grid": {"data.feature_gram": [[[1, 0], [0, 1]], None]}},
     "'gram' needs data.feature_gram (a K x K matrix) (grid point data.feature_gram=None)"),
]


@pytest.mark.parametrize("spec,needle", BAD_SPECS)
def test_bad_spec_is_one_line_exit_2(tmp_path, capsys, spec, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()  # nothing written for an invalid spec


def test_different_spec_in_existing_dir_is_refused(local_sweep, tmp_path, capsys):
    out, _ = local_sweep
    other = dict(SPEC, seeds=3)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs at 'seeds'" in err


# ------------------------------------------------------------------------------------------- numbers


def test_vmap_path_equals_sequential_path(local_sweep):
    out, df = local_sweep
    assert len(df) == 8 and df["config_hash"].is_unique
    assert set(df["batch_runs"]) == {4}  # each expectation's 4 runs shared one vmapped computation
    exact_loss: dict[float, float] = {}
    for _, row in df.iterrows():
        run = load_run(out / "runs" / row["config_hash"])
        cfg = run.config
        assert cfg.hash() == row["config_hash"]
        res = run_training(cfg, progress=False)  # the plain, one-run trainer
        seq = res.trajectory
        vm = run.trajectory
        np.testing.assert_array_equal(vm.steps, seq.steps)
        # Same float64 operations; vmap may batch reductions in another order, a few ulps (~1e-16) per step.
        # Observed: bit-identical, or ~1e-15 apart; GD here is contracting, so deviations stay far below
        # steps * 1e-16 = 3e-13 relative. The tolerance allows 1e-11 relative (+1e-14 absolute near 0).
        for name in ("loss", "feature_loss", "scores", "attention"):
            np.testing.assert_allclose(getattr(vm, name), getattr(seq, name), rtol=1e-11, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(row["final_loss"], seq.loss[-1], rtol=1e-11)
        # params.npz as 'train' writes it: param_0 .. in the order of the parameters' pytree leaves, the same
        # values up to the round-off allowed above
        with np.load(out / "runs" / row["config_hash"] / "params.npz") as kept:
            leaves = jax.tree.leaves(res.params)
            assert sorted(kept.files) == [f"param_{i}" for i in range(len(leaves))]
            for i, leaf in enumerate(leaves):
                np.testing.assert_allclose(kept[f"param_{i}"], np.asarray(leaf), rtol=1e-11, atol=1e-14)
        if cfg.train.expectation == "exact":
            # independent numpy GD on the exact population loss (tests/helpers.py; spec sections 4-5)
            p = feature_probs(cfg.data)
            if p[0] not in exact_loss:  # the seeds share it: exact tables have no randomness
                exact_loss[p[0]] = gd(p, cfg.data.prompt_length, cfg.train.lr, cfg.train.steps)[0][-1]
            np.testing.assert_allclose(row["final_loss"], exact_loss[p[0]], rtol=1e-9)
        # slowest minor feature: the last of the per-feature first steps with feature_loss <= eps (logged steps)
        hits = [np.flatnonzero(seq.feature_loss[:, k] <= cfg.eps) for k in (1, 2)]
        expected = max(seq.steps[h[0]] for h in hits) if all(h.size for h in hits) else None
        assert (None if pd.isna(row["time_to_eps_minor"]) else row["time_to_eps_minor"]) == expected
        own = np.diagonal(seq.attention[-1])
        assert row["final_attention_leak"] == pytest.approx(np.mean(1 - own), rel=1e-10)


def test_dask_local_cluster_gives_the_same_numbers(local_sweep, tmp_path):
    from dask.distributed import LocalCluster

    _, local = local_sweep
    # processes (not threads): each worker is its own interpreter, as on a real cluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dist = run_sweep(SPEC, tmp_path / "dask", cluster=cluster.scheduler_address, progress=False)
    assert len(dist) == 8
    assert dist.attrs["sweep"]["cluster"] == cluster.scheduler_address
    # the batch plan depends only on the spec, so every worker runs the same compiled program on the same
    # inputs: bit-identical numbers are expected, not just close ones
    pd.testing.assert_frame_equal(dist[["config_hash", *DERIVED]], local[["config_hash", *DERIVED]])
    assert sorted(p.name for p in (tmp_path / "dask" / "runs").iterdir()) == sorted(local["config_hash"])
    for h in local["config_hash"]:  # the parameters come back from the workers too, bit-identical
        assert (tmp_path / "dask" / "runs" / h / "params.npz").read_bytes() == \
            (local_sweep[0] / "runs" / h / "params.npz").read_bytes()


def test_kept_runs_can_be_evaluated(local_sweep, capsys):
    """runs/<hash>/params.npz holds the final parameters: evaluate on the training distribution observes them
    as the last logged row did (same float64 computation), so it gives the row's final_loss again."""
    out, df = local_sweep
    for _, row in df.iterrows():
        got = evaluate_run(out / "runs" / row["config_hash"], {})["loss"]
        assert got == pytest.approx(row["final_loss"], rel=1e-12, abs=1e-15)
    first = df.iloc[0]
    assert main(["evaluate", str(out / "runs" / first["config_hash"])]) == 0
    assert capsys.readouterr().out.startswith(f"loss {first['final_loss']:.6g} on the training distribution\n")


def test_a_run_stopped_before_its_batch_keeps_its_own_final_parameters(tmp_path):
    """Under stop_at_eps the batch goes on after a member stopped, so the batch's final parameters are not
    that member's: the worker trains it alone to the same stop. p1 = 0.5 and 0.7 reach eps at different
    steps (the two final_step values differ), and evaluate gives each run's final_loss again."""
    spec = {"base": {"data.prompt_length": 32, "train.expectation": "mean_field", "train.steps": 3000,
                     "data.num_features": 3, "train.stop_at_eps": True},
            "grid": {"data.dominant_prob": [0.5, 0.7]}, "keep_trajectories": True}
    df = run_sweep(spec, tmp_path / "s", workers=1, progress=False)
    assert list(df["batch_runs"]) == [2, 2] and df["final_step"].nunique() == 2
    for _, row in df.iterrows():
        got = evaluate_run(tmp_path / "s" / "runs" / row["config_hash"], {})["loss"]
        assert got == pytest.approx(row["final_loss"], rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------------------- storage


def test_resume_after_kill_9(tmp_path):
    out = tmp_path / "killed"
    # 4 batches of 4 runs, each committed on its own; the shapes of SPEC's mean-field batch, so the resume
    # below reuses this process's compiled program
    spec = {"base": dict(SPEC["base"], **{"train.expectation": "mean_field"}),
            "grid": {"data.dominant_prob": {"linspace": [0.4, 0.8, 16]}}, "max_batch": 4}
    assert len(plan_batches(expand(load_spec(spec)), 4)) == 4
    code = f"from icl_dynamics.sweeps import run_sweep; run_sweep({spec!r}, {str(out)!r}, workers=1, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.time() + 60
    while not list((out / ROWS_DIR).glob("*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = list((out / ROWS_DIR).glob("*.parquet"))
    assert 1 <= len(parts) < 4, "the kill must land mid-sweep"
    before = load_sweep(out)
    df = run_sweep(spec, out, workers=1, progress=False)
    assert len(df) == 16 and df["config_hash"].is_unique
    assert df.attrs["sweep"]["skipped"] == len(before) and df.attrs["sweep"]["computed"] == 16 - len(before)
    # finished rows are kept as they were (not recomputed, not rewritten): equal to the last bit
    kept = df.set_index("config_hash").loc[before["config_hash"]].reset_index()
    pd.testing.assert_frame_equal(kept[before.columns], before, check_dtype=False)  # nulls elsewhere: int->float
    assert pd.read_parquet(out / "sweep.parquet")["config_hash"].is_unique
    again = run_sweep(spec, out, workers=1, progress=False)  # a finished sweep re-runs nothing
    assert again.attrs["sweep"]["computed"] == 0 and len(again) == 16


def test_divergence_is_recorded_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_DYNAMICS_FAULT", "nan@5")  # poisons the update that produces step 5
    df = run_sweep({"base": {"train.expectation": "mean_field", "train.steps": 20, "data.num_features": 3},
                    "grid": {"train.lr": [0.5, 1.0]}, "keep_trajectories": True},
                   tmp_path / "div", workers=1, progress=False)
    assert list(df["status"]) == ["diverged"] * 2
    assert list(df["diverged_at"]) == [5, 5] and list(df["final_step"]) == [4, 4]  # last finite step kept
    for _, row in df.iterrows():  # and its parameters: those of the last finite step, the last logged row
        got = evaluate_run(tmp_path / "div" / "runs" / row["config_hash"], {})["loss"]
        assert got == pytest.approx(row["final_loss"], rel=1e-12, abs=1e-15)


# ------------------------------------------------------------------------------------------- figures


def test_power_law_fit_recovers_exponent():
    x = np.array([4, 8, 16, 32, 64] * 6, dtype=float)
    exact = fit_power_law(x, 3 * x ** 2)
    assert exact.exponent == pytest.approx(2, abs=1e-12) and exact.prefactor == pytest.approx(3, rel=1e-10)
    rng = np.random.default_rng(0)
    sigma = 0.1
    noisy = fit_power_law(x, 3 * x ** 2 * np.exp(sigma * rng.standard_normal(x.size)))
    # OLS slope standard error for known noise: sigma / sqrt(sum (log x - mean)^2); 4 of them is >99.99%
    se = sigma / np.sqrt(np.sum((np.log(x) - np.log(x).mean()) ** 2))
    assert abs(noisy.exponent - 2) < 4 * se
    assert noisy.lo < noisy.exponent < noisy.hi and noisy.hi - noisy.lo < 8 * se


def test_plot_sweep_cli(local_sweep, tmp_path, capsys):
    out, _ = local_sweep
    heat = tmp_path / "heat.png"
    assert main(["plot-sweep", str(out), "--x", "data.dominant_prob", "--y", "train.expectation",
                 "--value", "time_to_eps_minor", "--out", str(heat)]) == 0
    assert heat.stat().st_size > 1000
    assert main(["plot-sweep", str(out), "--x", "dominant_prob", "--value", "final_loss"]) == 0
    printed = capsys.readouterr().out
    assert "exponent" in printed and (out / "figures" / "final_loss_vs_data.dominant_prob.png").is_file()
    assert main(["plot-sweep", str(out), "--x", "data.dominant_prob", "--value", "no_such"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_derived_values_follow_each_grid_point(tmp_path):
    """train.steps: "{8 * K**2 / lr}" gives ceil(8 K^2 / lr) per point; unsafe or unknown text is refused in
    one line (no Python eval)."""
    spec = {"base": {"train.expectation": "mean_field", "train.steps": "{8 * K**2 / lr}"},
            "grid": {"data.num_features": [3, 5], "train.lr": [0.7, 2.0]}}
    got = {(r.config.data.num_features, r.config.train.lr): r.config.train.steps for r in expand(load_spec(spec))}
    assert got == {(K, lr): math.ceil(8 * K * K / lr) for K in (3, 5) for lr in (0.7, 2.0)}
    for bad in ("{__import__('os')}", "{K.real}", "{open}", "{10 ** 10 ** 10}", "{nope * 2}", "{1/0}"):
        with pytest.raises(SweepError) as e:
            expand(load_spec({"base": {"train.steps": bad}, "grid": {"data.num_features": [3]}}))
        assert "derived value" in str(e.value) and "\n" not in str(e.value)


def test_an_axis_that_cannot_change_the_result_is_warned_about(tmp_path, capsys):
    spec = {"base": {"train.engine": "tokens", "data.num_features": 2, "data.prompt_length": 4, "train.steps": 2,
                     "train.batch_size": 2, "train.eval_prompts": 2},
            "grid": {"train.count_samples": [10, 20]}}
    run_sweep(spec, tmp_path / "s", workers=1, progress=False)
    assert "grid axis 'train.count_samples' cannot change the result" in capsys.readouterr().err


def test_plot_sweep_by_splits_series_and_no_fit(tmp_path, capsys):
    spec = {"base": {"data.prompt_length": 32, "train.expectation": "mean_field", "train.steps": 3000,
                     "train.stop_at_eps": True}, "grid": {"data.num_features": [3, 4, 6], "data.dominant_prob": [0.5, 0.7]}}
    run_sweep(spec, tmp_path / "s", workers=1, progress=False)
    assert main(["plot-sweep", str(tmp_path / "s"), "--x", "data.num_features", "--value", "time_to_eps_dominant",
                 "--by", "data.dominant_prob"]) == 0
    out = capsys.readouterr().out
    assert "data.dominant_prob = 0.5: exponent" in out and "data.dominant_prob = 0.7: exponent" in out
    assert main(["plot-sweep", str(tmp_path / "s"), "--x", "data.num_features", "--value", "time_to_eps_dominant",
                 "--no-fit", "--out", str(tmp_path / "f.png")]) == 0
    assert "exponent" not in capsys.readouterr().out and (tmp_path / "f.png").stat().st_size > 1000


def test_sweep_keeps_a_dim_set_in_its_base(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {data.dim: 4, data.num_features: 4, train.steps: 5, train.expectation: mean_field}\n"
                    "grid: {data.num_features: [2, 4]}\n")
    dims = sorted((r.config.data.num_features, r.config.data.dim) for r in expand(load_spec(spec)))
    assert dims == [(2, 4), (4, 4)]


def test_a_base_completed_by_the_grid_is_accepted(tmp_path):
    """data.features: gram in the base is complete only with a data.feature_gram from the grid: the sweep
    validates base + point, as the runs use it. With Gram = I, V = U L^T = U is the orthonormal frame, so that
    run is the paper's setting: its final loss equals a plain orthonormal run's (float64 round-off)."""
    grams = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.5], [0.5, 1.0]]]
    base = {"data.num_features": 2, "train.expectation": "mean_field", "train.steps": 50}
    path = tmp_path / "gram.yaml"
    path.write_text(yaml.safe_dump({"base": {"data.features": "gram", **base}, "grid": {"data.feature_gram": grams}}))
    assert [r.config.data.feature_gram for r in expand(load_spec(path))] == grams
    assert main(["sweep", str(path), "--out", str(tmp_path / "s"), "--workers", "1", "--quiet"]) == 0
    df = load_sweep(tmp_path / "s")
    assert len(df) == 2
    plain = run_training(expand(load_spec({"base": base, "grid": {"seed": [0]}}))[0].config, progress=False)
    assert df["final_loss"][0] == pytest.approx(plain.trajectory.loss[-1], rel=1e-12)
    # correlated features (off-diagonal 0.5) interfere: a different run, slower here
    assert df["final_loss"][1] > 2 * df["final_loss"][0]


def test_an_eval_block_in_the_base_logs_every_runs_eval_curves(tmp_path):
    """An eval: block in the sweep's base is every run's (vmapped: trainer.Watch per member): the table gets
    eval_final_loss, each kept run its eval_trajectory.npz, and both equal evaluate of the run's parameters on
    the eval distribution (the same observation compiled elsewhere: 1e-12 relative)."""
    spec = {"base": {"data.num_features": 3, "data.prompt_length": 16, "train.expectation": "mean_field",
                     "train.steps": 300, "eval": {"data": {"probs": "balanced", "prompt_length": 64}}},
            "grid": {"data.dominant_prob": [0.5, 0.8]}, "keep_trajectories": True}
    df = run_sweep(spec, tmp_path / "s", workers=1, progress=False)
    assert list(df["batch_runs"]) == [2, 2]
    changes = {"data.probs": "balanced", "data.prompt_length": 64}
    for _, row in df.iterrows():
        run = tmp_path / "s" / "runs" / row["config_hash"]
        want = evaluate_run(run, changes)["loss"]
        assert row["eval_final_loss"] == pytest.approx(want, rel=1e-12)
        with np.load(run / "eval_trajectory.npz") as z:
            assert z["loss"][-1] == pytest.approx(want, rel=1e-12)
        engine = json.loads((run / "summary.json").read_text())["engine"]  # as train writes it
        assert engine["expectation"] == "mean_field" and engine["eval"]["final_loss"] == row["eval_final_loss"]
    assert df["eval_final_loss"].nunique() == 2
