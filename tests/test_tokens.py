"""engines/tokens.py: the regrouped forward pass against the paper's literal one."""

from __future__ import annotations

import numpy as np


def test_tokens_engine_loss_is_the_literal_forward_pass():
    """The engine's per-feature regrouping equals the paper's literal F(E)[d, N] on the same prompts, in value
    and gradient, with d > K (random orthonormal V) and both softmax options: to round-off (1e-12)."""
    import jax
    import jax.numpy as jnp

    from icl_dynamics.config import load_config
    from icl_dynamics.data import sample_prompts
    from icl_dynamics.model import embed, literal_forward
    from icl_dynamics.engines import build_engine
    from icl_dynamics.engines import tokens as T

    for include_query in (False, True):
        cfg = load_config(None, ["data.num_features=3", "data.dim=5", "data.prompt_length=7", "train.engine=tokens",
                                 f"model.include_query_in_softmax={str(include_query).lower()}"])
        e = build_engine(cfg)
        st, c = e.static, e.consts
        pr = sample_prompts(jax.random.PRNGKey(3), c.probs, 64, 7, 5)
        Q = jax.random.normal(jax.random.PRNGKey(4), (5, 5), jnp.float64)

        def literal(Q):
            x = jnp.moveaxis(c.V[:, pr.feat], 0, 1)  # (B, d, N+1)
            y = jnp.einsum("bdi,bd->bi", x, pr.w)
            yhat = literal_forward(embed(x, y), Q, include_query)[:, 5, 7]
            return 0.5 * jnp.mean((yhat - y[:, -1]) ** 2)

        ours, g_ours = jax.value_and_grad(T.prompts_loss)(Q, st, c, pr)
        ref, g_ref = jax.value_and_grad(literal)(Q)
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-10, atol=1e-13)
