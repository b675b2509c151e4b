"""Checkpoints, kill -9 / SIGTERM / SIGINT, and --resume (issue 5).

"Identical" means byte-identical files: storage.save_npz writes fixed zip timestamps, so equal arrays give
equal trajectory.npz bytes, and the same holds for metrics.parquet and summary.json. The subprocess tests
share a JAX persistent compilation cache, so only the first process of each engine compiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from icl_dynamics import checkpoint, cli
from icl_dynamics.config import load_config
from icl_dynamics.engines import build_engine
from icl_dynamics.storage import write_config
from icl_dynamics.errors import Interrupted
from icl_dynamics.trainer import log_schedule, train

pytestmark = pytest.mark.user_defaults  # end to end: the package must turn float64 on by itself

# Long enough that a kill after the first checkpoint (at 5% of the steps) lands mid-run.
RUNS = {
    "population": ["data.num_features=4", "train.expectation=mean_field", "train.steps=400000",
                   "train.checkpoint_every=10000"],
    "tokens": ["train.engine=tokens", "data.num_features=3", "data.prompt_length=8", "train.batch_size=8",
               "train.eval_prompts=8", "train.steps=4000", "train.checkpoint_every=100"],
}
SAME_FILES = ("trajectory.npz", "metrics.parquet", "summary.json", "config.yaml")


def _sets(args):
    return [x for a in args for x in ("--set", a)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = {k: v for k, v in os.environ.items() if k != "ICL_DYNAMICS_FAULT"}
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return e


def _cli(args, env, **kw):
    return [sys.executable, "-m", "icl_dynamics", *args], dict(env=env, stdout=subprocess.PIPE,
                                                               stderr=subprocess.PIPE, text=True, **kw)


def _run(args, env) -> subprocess.CompletedProcess:
    argv, kw = _cli(args, env)
    return subprocess.run(argv, timeout=300, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """Uninterrupted run directory per engine (built lazily, shared by the tests)."""
    done = {}

    def get(engine: str) -> Path:
        if engine not in done:
            out = tmp_path_factory.mktemp("ref") / engine
            args = ["train", "--quiet", "--out", str(out), *_sets(RUNS[engine])]
            if engine == "population":  # in-process: same shapes as `small`, so no new compile
                assert cli.main(args) == 0
            else:  # a subprocess fills the compilation cache for the two that follow
                r = _run(args, env)
                assert r.returncode == 0, r.stderr
            done[engine] = out
        return done[engine]

    return get


def _checkpoint_step(out: Path) -> int:
    try:
        with np.load(out / checkpoint.CHECKPOINT) as z:
            return json.loads(str(z["meta"]))["step"]
    except FileNotFoundError:
        return -1


def _start_and_wait_for_checkpoint(args: list[str], out: Path, env, after: int = -1) -> subprocess.Popen:
    """Start the CLI and return once it has written a checkpoint beyond step ``after``."""
    argv, kw = _cli(args, env)
    proc = subprocess.Popen(argv, **kw)
    deadline = time.monotonic() + 300
    while _checkpoint_step(out) <= after:
        assert proc.poll() is None, f"run ended before its checkpoint: {proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return proc


def _assert_same_files(a: Path, b: Path):
    """Every file of run ``a`` but the manifest (times, resumed_from) is byte-identical in ``b``."""
    names = {p.name for p in a.iterdir()} - {"manifest.json"}
    assert names >= set(SAME_FILES) and names == {p.name for p in b.iterdir()} - {"manifest.json"}
    for name in sorted(names):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _kill9_midrun(proc: subprocess.Popen, out: Path):
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "trajectory.npz").exists()  # it really died mid-run


@pytest.mark.slow
def test_kill9_then_resume_is_identical_tokens(tmp_path, env, reference):
    ref = reference("tokens")
    out = tmp_path / "run"
    _kill9_midrun(_start_and_wait_for_checkpoint(["train", "--quiet", "--out", str(out),
                                                  *_sets(RUNS["tokens"])], out, env), out)
    assert json.loads((out / "summary.json").read_text())["status"] == "running"

    r = _run(["train", "--quiet", "--resume", str(out)], env)
    assert r.returncode == 0, r.stderr
    _assert_same_files(ref, out)
    assert not (out / checkpoint.CHECKPOINT).exists()
    assert json.loads((out / "manifest.json").read_text())["resumed_from"] > 0


@pytest.mark.slow
def test_sigterm_then_kill9_then_resume_is_identical_population(tmp_path, env, reference, capsys):
    """SIGTERM saves a checkpoint and exits 143; a resumed run killed -9 mid-run resumes again; the end
    result equals the uninterrupted run."""
    out = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(["train", "--quiet", "--out", str(out), *_sets(RUNS["population"])],
                                          out, env)
    first = _checkpoint_step(out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "--resume" in err
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / checkpoint.CHECKPOINT) as z:
        meta = json.loads(str(z["meta"]))
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert meta["reason"] == "SIGTERM" and meta["step"] == summary["step"] >= first

    resume = ["train", "--quiet", "--resume", str(out)]
    _kill9_midrun(_start_and_wait_for_checkpoint(resume, out, env, after=meta["step"]), out)
    r = _run(resume, env)
    assert r.returncode == 0, r.stderr
    _assert_same_files(reference("population"), out)

    code = cli.main(resume)  # a finished run: nothing to resume
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already finished" in err[0]


SMALL = ["data.num_features=4", "train.expectation=mean_field", "train.steps=3000"]


@pytest.fixture(scope="module")
def small():
    cfg = load_config(None, SMALL)
    engine = build_engine(cfg)
    schedule = log_schedule(cfg.train.steps, cfg.train.log_every)
    states = []
    clean = train(engine, schedule, progress=False, checkpoint_every=1,
                  on_checkpoint=lambda s, reason: states.append((s, reason)))
    return cfg, engine, schedule, clean, states


def test_resume_from_every_chunk_boundary_is_exact(small):
    cfg, engine, schedule, clean, states = small
    # checkpoint_every=1: a checkpoint at every chunk boundary but the last
    assert [s.index for s, _ in states] == list(range(16, len(schedule), 16))
    assert {r for _, r in states} == {"periodic"}
    for state, _ in states:
        assert state.step == schedule[state.index - 1]
        res = train(engine, schedule, progress=False, start=state)
        assert res.status == "completed"
        for a, b in zip(res.trajectory, clean.trajectory):
            assert a.dtype == b.dtype and np.array_equal(a, b)  # bit for bit
        assert np.array_equal(res.params, clean.params)


def test_checkpoint_file_round_trip(tmp_path, small):
    cfg, engine, schedule, clean, states = small
    state = states[len(states) // 2][0]
    checkpoint.save(tmp_path, cfg, engine, state, "periodic")
    back, meta = checkpoint.load(tmp_path, cfg, engine, schedule)
    assert meta["step"] == state.step and back.index == state.index
    assert np.array_equal(back.params, state.params)
    for a, b in zip(back.rows, state.rows):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_checkpoint_interval():
    assert checkpoint.interval(load_config(None, ["train.steps=2000"])) == (100, checkpoint.DEFAULT_MIN_SECONDS)
    assert checkpoint.interval(load_config(None, ["train.steps=7"]))[0] == 1
    assert checkpoint.interval(load_config(None, ["train.checkpoint_every=33"])) == (33, 0.0)


def test_min_seconds_gates_periodic_checkpoints(small):
    cfg, engine, schedule, clean, _ = small
    calls = []
    res = train(engine, schedule, progress=False, checkpoint_every=1, min_checkpoint_seconds=3600,
                on_checkpoint=lambda s, r: calls.append(r))
    assert calls == [] and np.array_equal(res.trajectory.scores, clean.trajectory.scores)


def test_sigint_in_process_finishes_chunk_and_saves(small):
    cfg, engine, schedule, clean, _ = small
    calls = []

    def on_checkpoint(state, reason):
        calls.append((state, reason))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives "during" the next chunk

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info:
        train(engine, schedule, progress=False, checkpoint_every=1, on_checkpoint=on_checkpoint,
              start=_state_at(clean, 16))
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert info.value.exit_code == 130 and info.value.saved
    # periodic at the first boundary (index 32), SIGINT at the next, then stop
    assert [(s.index, r) for s, r in calls] == [(32, "periodic"), (48, "SIGINT")]
    assert np.array_equal(calls[1][0].params, clean.trajectory.scores[47])  # population: params = scores


def _state_at(clean, index):
    from icl_dynamics.trainer import TrainState
    from icl_dynamics.trajectory import Trajectory

    rows = Trajectory(*(a[:index] for a in clean.trajectory))
    return TrainState(index, int(rows.steps[-1]), np.asarray(rows.scores[-1]), rows)  # population: Q = scores


@pytest.fixture
def resumable(tmp_path, small):
    """A run directory as a crash leaves it: config, 'running' summary, a checkpoint half-way."""
    cfg, engine, schedule, clean, states = small
    out = tmp_path / "run"
    out.mkdir()
    write_config(out, cfg)
    (out / "summary.json").write_text('{"status": "running"}')
    checkpoint.save(out, cfg, engine, states[len(states) // 2][0], "periodic")
    return out, clean


def _main(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_resume_in_process_completes_identically(resumable, capsys):
    out, clean = resumable
    code, err = _main(["train", "--quiet", "--resume", str(out)], capsys)
    assert code == 0, err
    with np.load(out / "trajectory.npz") as z:
        assert np.array_equal(z["scores"], clean.trajectory.scores)
        assert np.array_equal(z["loss"], clean.trajectory.loss)


def _damage_truncate(out):
    p = out / checkpoint.CHECKPOINT
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _damage_garbage(out):
    (out / checkpoint.CHECKPOINT).write_bytes(b"not a zip at all")


def _damage_meta(out):
    p = out / checkpoint.CHECKPOINT
    with np.load(p) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(p, **arrays)


def _damage_shape(out):
    p = out / checkpoint.CHECKPOINT
    with np.load(p) as z:
        arrays = dict(z)
    arrays["param_0"] = np.zeros((3, 3))
    np.savez(p, **arrays)


def _damage_config(out):
    p = out / "config.yaml"
    p.write_text(p.read_text().replace("lr: 1.0", "lr: 0.5"))


def _damage_no_checkpoint(out):
    (out / checkpoint.CHECKPOINT).unlink()


def _damage_no_config(out):
    (out / "config.yaml").unlink()


@pytest.mark.parametrize("damage,words", [
    (_damage_truncate, "damaged"), (_damage_garbage, "damaged"), (_damage_meta, "another version"),
    (_damage_shape, "param_0"), (_damage_config, "does not match"), (_damage_no_checkpoint, "no checkpoint"),
    (_damage_no_config, "config.yaml")])
def test_resume_refuses_damaged_dirs_in_one_line(resumable, capsys, damage, words):
    out, _ = resumable
    damage(out)
    code, err = _main(["train", "--quiet", "--resume", str(out)], capsys)
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert "Traceback" not in "".join(err)


@pytest.mark.parametrize("argv,words", [
    (["train", "--resume", "RUN", "--set", "train.lr=2.0"], "--resume"),
    (["train", "--resume", "RUN", "--out", "x"], "--resume"),
    (["train", "--resume", "/nonexistent/run"], "does not exist"),
    (["train"], "--out"),
])
def test_resume_argument_errors(tmp_path, capsys, argv, words):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--quiet", "--out", str(out), *_sets(SMALL)]
    assert _main(args, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _main(args + ["--set", "train.lr=2.0"], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_run_is_marked_failed_with_reason(tmp_path, monkeypatch):
    from icl_dynamics import runner

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(runner, "train", crash)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):  # a bug is not a user error: it propagates
        cli.main(["train", "--quiet", "--out", str(out), *_sets(SMALL)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"status": "failed", "reason": "RuntimeError: simulated crash"}
    assert not (out / "trajectory.npz").exists()


def test_eval_block_rows_survive_a_checkpoint(tmp_path):
    """A run with an eval: block logs the eval distribution's metrics at every row (trainer.Watch); a
    checkpoint file carries those rows, so resuming from it gives the uninterrupted run's eval rows and its
    own rows bit for bit."""
    from icl_dynamics.evaluate import eval_watch

    cfg = load_config(None, SMALL + ["eval={data.probs: balanced}"])
    engine, watch = build_engine(cfg), eval_watch(cfg)
    schedule = log_schedule(cfg.train.steps, cfg.train.log_every)
    states = []
    clean = train(engine, schedule, progress=False, checkpoint_every=1, watch=watch,
                  on_checkpoint=lambda s, reason: states.append(s))
    assert clean.watched is not None and np.array_equal(clean.watched.steps, clean.trajectory.steps)
    assert not np.allclose(clean.watched.loss, clean.trajectory.loss)  # another distribution, other numbers
    checkpoint.save(tmp_path, cfg, engine, states[len(states) // 2], "periodic")
    back, _ = checkpoint.load(tmp_path, cfg, engine, schedule)
    res = train(engine, schedule, progress=False, start=back, watch=watch)
    for a, b in zip((*res.trajectory, *res.watched), (*clean.trajectory, *clean.watched)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
