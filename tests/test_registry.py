"""registry.py and the engine protocol: a new engine is one module with a spec and a registration."""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_dynamics.cli import main
from icl_dynamics.config import load_config
from icl_dynamics.engines import Engine, EngineSpec, training
from icl_dynamics.errors import ConfigError
from icl_dynamics.registry import ENGINES, Registry
from icl_dynamics.storage import load_run
from icl_dynamics.trajectory import Metrics

pytestmark = pytest.mark.user_defaults  # end to end: the package must turn float64 on by itself


# ---- a small engine, defined and registered here, outside the package -------------------------------------
class ToyConsts(NamedTuple):
    target: jnp.ndarray  # (K, K)


def _grad(static, c, s, step):
    return s - c.target  # of 1/2 ||s - target||^2


def _observe(static, c, s):
    row = 0.5 * jnp.sum((s - c.target) ** 2, axis=1)
    return Metrics(jnp.sum(row), row, s, jax.nn.softmax(s, axis=1))


def _build(cfg) -> Engine:
    K = cfg.data.num_features
    target = 3.0 * jnp.eye(K, dtype=jnp.float64)
    return Engine("toy", (), ToyConsts(target), jnp.zeros((K, K), jnp.float64), _grad, _observe, *training(cfg))


@pytest.fixture
def toy_engine():
    ENGINES.register("toy")(EngineSpec(_build, shape_key=lambda cfg: (cfg.data.num_features,),
                                       sizes=lambda cfg: [("data.num_features", "K^2", cfg.data.num_features ** 2)]))
    yield
    ENGINES._entries.pop("toy")


def test_outside_engine_trains_through_the_cli(toy_engine, tmp_path, capsys):
    """GD on 1/2 ||s - 3 I||^2 from 0: s_t = 3 I (1 - (1 - lr)^t) exactly; the run directory holds it to
    round-off (1e-12: t products of one float)."""
    out = tmp_path / "run"
    code = main(["train", "--quiet", "--out", str(out), "--set", "train.engine=toy", "--set", "data.num_features=3",
                 "--set", "train.lr=0.1", "--set", "train.steps=40", "--set", "train.log_every=1"])
    assert code == 0, capsys.readouterr().err
    run = load_run(out)
    t = run.trajectory.steps
    want = 3.0 * (1 - 0.9 ** t)
    np.testing.assert_allclose(run.trajectory.scores[:, 0, 0], want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(run.trajectory.scores[:, 0, 1], 0.0, atol=0)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_unregistered_engine_is_refused_with_the_known_names():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.engine=toy"])
    assert "train.engine" in str(e.value) and "population" in str(e.value) and "tokens" in str(e.value)


def test_registry_loads_its_builtins_on_first_lookup(tmp_path, monkeypatch):
    """A registry imports its builtins module at the first lookup, not before (so config.py can validate
    names without importing the modules that implement them)."""
    import sys

    (tmp_path / "toy_builtins.py").write_text(
        "from icl_dynamics.registry import Registry\n"
        "THINGS = Registry('thing', __name__)\n"
        "THINGS.register('b')(2)\nTHINGS.register('a')(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry("thing", "toy_builtins")
    assert "toy_builtins" not in sys.modules
    import toy_builtins

    assert list(toy_builtins.THINGS) == ["a", "b"] and toy_builtins.THINGS["b"] == 2
    assert "a" not in r  # another registry: entries are per registry
    with pytest.raises(KeyError, match="unknown thing 'nope'; known: a, b"):
        toy_builtins.THINGS["nope"]
