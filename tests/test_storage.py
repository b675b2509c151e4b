"""Run directories: reproducible bytes, atomic writes, loading with one-line errors."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest

from icl_dynamics import storage
from icl_dynamics.config import validate
from icl_dynamics.errors import RunDirError, StorageError
from icl_dynamics.engines import build_engine
from icl_dynamics.runner import execute
from icl_dynamics.storage import atomic_write_text, load_run, prepare_run_dir, save_npz


def tiny(engine: str, seed: int = 0):
    # shapes as in test_engines (whose exact table has C(10, 2) = 45 rows), so that in one pytest process each
    # engine compiles once
    return validate({
        "data": {"num_features": 3, "dim": 5, "prompt_length": 8, "probs": "imbalanced", "dominant_prob": 0.6},
        "model": {"include_query_in_softmax": True},
        "train": {"engine": engine, "expectation": "monte_carlo", "count_samples": 45, "batch_size": 2048,
                  "eval_prompts": 512, "lr": 1.0, "steps": 40},
        "seed": seed,
    })


@pytest.mark.parametrize("engine", ["population", "tokens"])
def test_same_seed_gives_identical_files(engine, tmp_path, monkeypatch):
    execute(tiny(engine), tmp_path / "a", progress=False)
    # the second run happens "two days later": nothing in the trajectory may depend on the wall clock
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 2 * 86400 + 7)
    execute(tiny(engine), tmp_path / "b", progress=False)
    monkeypatch.undo()
    for name in ("trajectory.npz", "metrics.parquet", "summary.json", "config.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    execute(tiny(engine, seed=1), tmp_path / "c", progress=False)
    a, c = load_run(tmp_path / "a").trajectory, load_run(tmp_path / "c").trajectory
    assert np.abs(a.scores[-1] - c.scores[-1]).max() > 1e-6  # another seed, another sample


def test_different_seed_gives_different_monte_carlo_table():
    t0, t1 = build_engine(tiny("population", 0)).consts.table, build_engine(tiny("population", 1)).consts.table
    assert not np.array_equal(np.asarray(t0.counts), np.asarray(t1.counts))
    t0b = build_engine(tiny("population", 0)).consts.table
    assert np.array_equal(np.asarray(t0.counts), np.asarray(t0b.counts))


def test_run_directory_round_trip(tmp_path):
    cfg = tiny("population")
    res = execute(cfg, tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert run.config == cfg and run.config.hash() == cfg.hash()
    for f in ("steps", "loss", "feature_loss", "scores", "attention"):
        np.testing.assert_array_equal(getattr(run.trajectory, f), getattr(res.trajectory, f))
    with np.load(tmp_path / "r" / "trajectory.npz") as z:
        assert sorted(z.files) == sorted(storage.TRAJECTORY_KEYS)
        assert all(z[k].dtype == np.float64 for k in z.files)
    assert run.summary["status"] == "completed"
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_prepare_run_dir_never_empties_a_users_folder(tmp_path):
    """A folder icl-dynamics did not make is refused even with --overwrite (issue 14, finding 1); one it
    made is replaced only with --overwrite, and only its own files go."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.yaml").write_text("mine")
    with pytest.raises(RunDirError, match="not made by icl-dynamics"):
        prepare_run_dir(user, overwrite=True)
    assert (user / "config.yaml").read_text() == "mine"
    ours = prepare_run_dir(tmp_path / "ours", overwrite=False)
    (ours / "trajectory.npz").write_text("old")
    (ours / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_run_dir(ours, overwrite=False)
    prepare_run_dir(ours, overwrite=True)
    assert (ours / "notes.txt").exists() and not (ours / "trajectory.npz").exists()  # only our own files go
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        prepare_run_dir(f, overwrite=True)


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="No space left on device"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.txt"]  # no temporary file left


def test_load_run_errors_are_one_line(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nope")
    execute(tiny("population"), tmp_path / "r", progress=False)
    traj = tmp_path / "r" / "trajectory.npz"
    good = traj.read_bytes()
    traj.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunDirError, match="damaged") as e:
        load_run(tmp_path / "r")
    assert "\n" not in str(e.value)
    with np.load(_restore(traj, good)) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["scores"] = arrays["scores"][:, :2]
    save_npz(traj, arrays)
    with pytest.raises(RunDirError, match="'scores' has shape"):
        load_run(tmp_path / "r")
    traj.unlink()
    with pytest.raises(RunDirError, match="no trajectory.npz"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "config.yaml").write_text("data: [1, 2\n")
    with pytest.raises(RunDirError):
        load_run(tmp_path / "r")


def _restore(path, data):
    path.write_bytes(data)
    return path
