"""Issue 14 findings where a second process, a signal or a kill is the point (findings 2, 5, 6, 13).

Each test starts the real CLI (``python -c`` calling ``cli.main``, sometimes with a hook that sends a
signal or a SIGKILL at an exact moment) and checks the run or sweep directory it leaves, then continues
in this process. Subprocesses share a JAX compilation cache.
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
import pyarrow.parquet as pq
import pytest
import yaml

import icl_dynamics.runner  # noqa: F401  (imported now, so an in-process call meets a running process at once)
from test_hostile import MEMORY_HUNGRY, S, call, one_line, sets

pytestmark = pytest.mark.user_defaults

# seeds change the trajectory (Monte Carlo counts); a few seconds of training, logged every 1000 steps so a
# short run of the same seed is a prefix of a long one
LONG = ["data.num_features=4", "data.prompt_length=16", "train.expectation=monte_carlo",
        "train.count_samples=64", "train.log_every=1000", "train.steps=200000"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("ICL_DYNAMICS_FAULT", "ICL_DYNAMICS_MAX_MEMORY")}
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return e


def start(argv: list, env: dict, prelude: str = "", **kw) -> subprocess.Popen:
    """``icl-dynamics ARGV`` in a new process; ``prelude`` (Python) runs first, e.g. to plant a hook."""
    code = prelude + "\nimport sys\nfrom icl_dynamics.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, list[str]]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, err.splitlines()


def proc_one_line(code: int, err: list[str], want: int, *names: str) -> str:
    assert code == want, (code, err)
    assert len(err) == 1 and "Traceback" not in err[0] and err[0].startswith("icl-dynamics: "), err
    for n in names:
        assert n in err[0], (n, err)
    return err[0]


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended first: {proc.returncode} {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def trajectory(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "trajectory.npz") as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------- 2. two writers

def test_f02_two_trains_on_one_out(tmp_path, env):
    """Two `train` processes on one --out (different seeds) both wrote it. Now exactly one is refused (exit 2,
    one line naming the holder's pid), and the folder holds the other's run alone: its config.yaml seed is
    the seed its trajectory comes from (a short rerun of that seed is a prefix of it, the other seed's
    is not)."""
    out = tmp_path / "run"
    procs = {seed: start(["train", "--quiet", *sets(LONG), "--set", f"seed={seed}", "--out", out], env)
             for seed in (1, 2)}
    results = {seed: finish(p) for seed, p in procs.items()}
    refused = [s for s, (code, _) in results.items() if code != 0]
    assert len(refused) == 1, results
    loser = refused[0]
    winner = 3 - loser
    assert results[winner][0] == 0, results
    proc_one_line(*results[loser], 2, str(out), f"(pid {procs[winner].pid})", "in use")
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == winner
    assert status(out) == "completed" and not (out / "checkpoint.npz").exists()
    assert json.loads((out / "manifest.json").read_text())["seed"] == winner
    got = trajectory(out)
    short = {}
    for seed in (1, 2):
        r = call(["train", "--quiet", *sets(LONG), "--set", "train.steps=3000", "--set", f"seed={seed}",
                  "--out", tmp_path / f"short{seed}"])
        assert r.code == 0, r.err
        short[seed] = trajectory(tmp_path / f"short{seed}")
    rows = len(short[winner]["steps"])
    for k in ("steps", "loss", "feature_loss", "scores", "attention", "probs"):
        want = short[winner][k]
        np.testing.assert_allclose(got[k][:rows] if k != "probs" else got[k], want, rtol=1e-12, atol=0, err_msg=k)
    assert not np.allclose(got["loss"][1:rows], short[loser]["loss"][1:rows], rtol=1e-12, atol=0)


def test_f02_resume_while_the_run_goes_on(tmp_path, env):
    """--resume was accepted while the original run went on. Now refused (one line naming the running
    process's pid) and the run continues undisturbed; stopped by SIGTERM, it resumes and completes here."""
    out = tmp_path / "run"
    proc = start(["train", "--quiet", *sets(LONG), "--set", "train.checkpoint_every=20000", "--out", out], env)
    try:
        wait_for(lambda: (out / "checkpoint.npz").is_file(), proc)
        before = (out / "config.yaml").read_bytes()
        one_line(call(["train", "--resume", out, "--quiet"]), 2, f"(pid {proc.pid})", "in use")
        assert (out / "config.yaml").read_bytes() == before and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    if code == 143:  # stopped at a chunk boundary with a checkpoint
        proc_one_line(code, err, 143, "interrupted", "--resume")
        assert status(out) == "interrupted"
        r = call(["train", "--resume", out, "--quiet"])
        assert r.code == 0, r.err
    else:  # it had already finished
        assert code == 0, err
    assert status(out) == "completed" and not (out / "checkpoint.npz").exists()


def test_f02_two_sweeps_on_one_directory(tmp_path, env):
    """Two `sweep` processes on one sweep directory: one is refused naming the other's pid; the table holds
    exactly one row per config of the spec."""
    spec = {"base": {"data.num_features": 3, "data.prompt_length": 8, "train.steps": 30000,
                     "train.expectation": "mean_field", "train.log_every": 1000},
            "grid": {"data.dominant_prob": [0.5, 0.6, 0.7, 0.8]}, "seeds": 2, "max_batch": 4}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "sw"
    procs = [start(["sweep", tmp_path / "s.yaml", "--out", out, "--workers", "1", "--quiet"], env) for _ in range(2)]
    results = [finish(p) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = [i for i, (code, _) in enumerate(results) if code == 2][0]
    proc_one_line(*results[loser], 2, f"(pid {procs[1 - loser].pid})", "in use")
    from icl_dynamics.sweeps import expand, load_spec

    want = {r.hash for r in expand(load_spec(spec))}
    hashes = pq.read_table(out / "sweep.parquet").column("config_hash").to_pylist()
    assert len(hashes) == len(want) == 8 and set(hashes) == want


# ------------------------------------------------------------ 5. a real kill -9 at the manifest write

KILL_AT = """
import os, signal
from pathlib import Path
from icl_dynamics import storage
_real = storage.atomic_write_bytes
def _write(path, data, **kw):
    if Path(path).name == {name!r} and b'"running"' not in data:
        os.kill(os.getpid(), signal.SIGKILL)
    return _real(path, data, **kw)
storage.atomic_write_bytes = _write
"""


@pytest.mark.parametrize("name", ["manifest.json"])
def test_f05_kill9_at_a_final_write(tmp_path, env, name):
    """kill -9 exactly as manifest.json is written (every other moment: test_hostile.py, from snapshots):
    train --out and train --resume agree that the run is resumable, and --resume completes it."""
    out = tmp_path / "run"
    proc = start(["train", "--quiet", *S, "--set", "train.checkpoint_every=16", "--out", out], env,
                 prelude=KILL_AT.format(name=name))
    code, err = finish(proc)
    assert code == -signal.SIGKILL, err
    assert status(out) == "running" and (out / "checkpoint.npz").is_file()
    line = one_line(call(["train", *S, "--set", "train.checkpoint_every=16", "--out", out]), 2)
    assert f"train --resume {out}" in line, line
    r = call(["train", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    assert status(out) == "completed" and (out / "manifest.json").is_file()
    assert not (out / "checkpoint.npz").exists()
    one_line(call(["train", "--resume", out]), 2, "already finished")


# --------------------------------------------------------------------- 6. memory under an OS limit

RLIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import contextlib, io
from icl_dynamics.cli import main
codes = []
for argv in {cases!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        codes.append(main(argv))
    print(codes[-1], err.getvalue().strip().replace(chr(10), ' | '))
"""


def test_f06_memory_hungry_configs_under_a_2gb_address_space(tmp_path, env):
    """The issue's memory-exhausting configs, run by the CLI in a process whose address space is limited to
    2 GB (RLIMIT_AS) and ICL_DYNAMICS_MAX_MEMORY=2G: each is refused with one line (exit 2), none dies of
    MemoryError, and a tiny run still trains under the same limit."""
    cases = [["train", "--quiet", *S, *sets(o), "--out", str(tmp_path / n)] for n, (o, _) in MEMORY_HUNGRY.items()]
    cases.append(["train", "--quiet", *S, "--out", str(tmp_path / "tiny")])
    r = subprocess.run([sys.executable, "-c", RLIMITED.format(cases=cases)], env=dict(env, ICL_DYNAMICS_MAX_MEMORY="2G"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stdout.strip().splitlines() if not x.startswith("done:")]
    assert len(lines) == len(cases), r.stdout
    for line, (name, (_, key)) in zip(lines, MEMORY_HUNGRY.items()):
        code, msg = line.split(" ", 1)
        assert code == "2" and key in msg and "|" not in msg, (name, line)
        assert not (tmp_path / name).exists()
    assert lines[-1].startswith("0"), lines[-1]
    assert status(tmp_path / "tiny") == "completed"


# --------------------------------------------------------------------- 13. signals outside training

SIGNAL_AT = """
import os, signal
import {module} as _m
_real = _m.{attr}
def _hook(*a, **k):
    os.kill(os.getpid(), signal.{sig})
    return _real(*a, **k)
_m.{attr} = _hook
"""

SIGNAL_AT_IMPORT = """
import importlib.abc, os, signal, sys
class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.{sig})
        return None
sys.meta_path.insert(0, _Hook())
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_f13_signal_during_start_up_marks_the_run_interrupted(tmp_path, env, sig):
    """SIGTERM or SIGINT during start-up (after summary.json says "running", before the training loop)
    left "running". Now "interrupted", exit 143 / 130, one line; train --out and --resume then agree that
    there is nothing to resume (no checkpoint yet)."""
    out = tmp_path / "run"
    prelude = SIGNAL_AT.format(module="icl_dynamics.checkpoint", attr="interval", sig=sig)
    code, err = finish(start(["train", "--quiet", *S, "--out", out], env, prelude=prelude))
    proc_one_line(code, err, 128 + getattr(signal, sig), "interrupted")
    assert status(out) == "interrupted"
    one_line(call(["train", "--resume", out]), 2, "no checkpoint")
    one_line(call(["train", *S, "--out", out]), 2, "--overwrite")


@pytest.mark.parametrize("module, sig", [("jax", "SIGINT"), ("jax", "SIGTERM"), ("pydantic", "SIGINT")])
def test_f13_signal_during_imports_is_one_line(tmp_path, env, module, sig):
    """SIGINT during the imports printed a traceback. The heavy imports happen inside the CLI's handler now:
    a signal while pydantic, jax or the config module load gives one line and 130 / 143; no run folder says
    "running"."""
    out = tmp_path / "run"
    prelude = SIGNAL_AT_IMPORT.format(module=module, sig=sig)
    code, err = finish(start(["train", "--quiet", *S, "--out", out], env, prelude=prelude))
    proc_one_line(code, err, 128 + getattr(signal, sig), "interrupted")
    assert status(out) in (None, "interrupted")


def test_f13_real_sigterm_as_the_run_starts(tmp_path, env):
    """A real SIGTERM sent the moment summary.json first says "running": exit 143, one line, "interrupted"."""
    out = tmp_path / "run"
    proc = start(["train", "--quiet", *S, "--out", out], env)
    wait_for(lambda: status(out) == "running", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    if code == 0:  # the tiny run finished before the signal arrived: nothing to check
        pytest.skip("the run finished before SIGTERM arrived")
    proc_one_line(code, err, 143, "interrupted")
    assert status(out) == "interrupted"
