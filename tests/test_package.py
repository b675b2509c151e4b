"""The package as a library: importing it changes nothing in the caller's JAX, and it still computes in
float64 where it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.user_defaults


def test_import_leaves_float32_default_and_runs_stay_float64():
    """A fresh process: float32 JAX before and after a run; the run's numbers equal those of an x64 process
    bit for bit (the package enables float64 itself, so nothing may differ)."""
    code = """
import jax, jax.numpy as jnp, numpy as np
import icl_dynamics
from icl_dynamics.config import load_config
assert jnp.ones(1).dtype == jnp.float32
cfg = load_config(None, ["data.num_features=4", "data.prompt_length=32", "train.steps=200",
                         "train.expectation=mean_field"])
r = icl_dynamics.run_training(cfg, progress=False)
assert jnp.ones(1).dtype == jnp.float32, "a run changed the caller's default"
assert r.trajectory.loss.dtype == np.float64 and r.params.dtype == np.float64
with jax.enable_x64(True):
    r64 = icl_dynamics.run_training(cfg, progress=False)
assert np.array_equal(r.trajectory.feature_loss, r64.trajectory.feature_loss)
assert np.array_equal(r.trajectory.scores, r64.trajectory.scores)
print("ok", r.trajectory.loss[-1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok ")
