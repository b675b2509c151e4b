"""The notebook API (api.py): train, load, Run views, the xarray round trip, sweeps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import icl_dynamics as icl  # noqa: E402

pytestmark = pytest.mark.user_defaults  # a notebook's JAX defaults: the package switches to float64 itself

SMALL = dict(data__num_features=4, data__prompt_length=32, train__steps=300, train__expectation="mean_field")


def test_train_returns_the_run_directory_the_cli_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = icl.train(**SMALL)
    assert run.path == tmp_path / "runs" / run.config.hash()
    assert (run.path / "trajectory.npz").is_file() and run.summary["status"] == "completed"
    again = icl.train(**SMALL)  # the same config again: loaded, not retrained (mtime unchanged)
    assert again.path == run.path
    assert (run.path / "trajectory.npz").stat().st_mtime_ns == (again.path / "trajectory.npz").stat().st_mtime_ns
    # the same run as the CLI would train: identical numbers
    other = icl.train({"data": {"num_features": 4, "prompt_length": 32}, "train.steps": 300,
                       "train.expectation": "mean_field"}, out=tmp_path / "explicit")
    assert np.array_equal(other.trajectory.scores, run.trajectory.scores)


def test_views_pandas_phases_plot(tmp_path):
    run = icl.train(**SMALL, out=tmp_path / "r")
    df = run.to_pandas()
    assert len(df) == len(run.trajectory.steps) * 4 and set(df["feature"]) == {0, 1, 2, 3}
    assert run.phases["setting"] == "imbalanced"
    ax = run.plot()
    ax = icl.load(tmp_path / "r").plot(ax=ax, label="again")  # overlay on one axes
    assert len(ax.get_lines()) == 2 * 4 + 2  # 4 curves per run, plus one eps line each
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "GD step + 1"


def test_to_xarray_round_trips_to_a_run_directory(tmp_path):
    """to_xarray keeps every array exactly (dims step x query x key, config in the attributes), and
    from_xarray writes it back as a run directory whose arrays and config equal the original's."""
    run = icl.train(**SMALL, out=tmp_path / "r")
    ds = run.to_xarray()
    assert ds["scores"].dims == ("step", "query", "key") and ds.attrs["data.num_features"] == 4
    assert np.array_equal(ds["attention"].values, run.trajectory.attention)
    back = icl.api.from_xarray(ds, tmp_path / "back")
    assert back.config == run.config
    for name in ("steps", "loss", "feature_loss", "scores", "attention"):
        assert np.array_equal(getattr(back.trajectory, name), getattr(run.trajectory, name)), name
    assert (back.path / "phases.json").read_text() == (run.path / "phases.json").read_text()


def test_sweep_api(tmp_path):
    spec = {"base": {"data.prompt_length": 32, "train.steps": 200, "train.expectation": "mean_field"},
            "grid": {"data.num_features": [3, 4]}, "keep_trajectories": True}
    sw = icl.api.sweep(spec, tmp_path / "s")
    assert len(sw.table) == 2 and sw.to_xarray().sizes["run"] == 2
    h = sw.table["config_hash"].iloc[0]
    assert sw.run(h).config.data.num_features == 3
    page = sw.explore("data.num_features", "final_loss")
    assert page.is_file() and page.stat().st_size > 1_000_000  # plotly.js inlined
