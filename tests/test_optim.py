"""optim.py: optimizers are optax values; plain GD is the paper's update bit for bit."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from icl_dynamics.config import load_config
from icl_dynamics.errors import ConfigError
from icl_dynamics.optim import Optimizer, optimizer_of


def test_gd_is_params_minus_lr_grad_bit_for_bit():
    """optax.sgd adds (-lr) * g, and x + (-y) == x - y exactly in IEEE arithmetic."""
    rng = np.random.default_rng(0)
    p, g = jnp.asarray(rng.normal(size=(5, 5))), jnp.asarray(rng.normal(size=(5, 5)))
    lr = jnp.asarray(0.37)
    tx = Optimizer().transform(lr)
    u, _ = tx.update(g, tx.init(p), p)
    assert np.array_equal(optax.apply_updates(p, u), p - lr * g)


def test_momentum_follows_its_recursion():
    """Heavy ball: v_t = m v_{t-1} + g_t, p_t = p_{t-1} - lr v_t (optax's convention), to round-off."""
    tx = optimizer_of("sgd_momentum", {"momentum": 0.5}).transform(0.1)
    p = jnp.asarray([1.0, -2.0])
    state, v, q = tx.init(p), np.zeros(2), np.array([1.0, -2.0])
    for g in ([1.0, 0.5], [0.2, -0.3], [0.0, 1.0]):
        u, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
        v = 0.5 * v + np.array(g)
        q = q - 0.1 * v
    np.testing.assert_allclose(p, q, rtol=0, atol=1e-15)


@pytest.mark.parametrize("sets, key", [(["train.optimizer=adam", "train.optimizer_args={momentum: 0.9}"],
                                        "optimizer_args"), (["train.optimizer=rmsprop"], "train.optimizer"),
                                       (["train.optimizer_args={b1: .nan}", "train.optimizer=adam"], "optimizer_args")])
def test_bad_optimizer_settings(sets, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, sets)
