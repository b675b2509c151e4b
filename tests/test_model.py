"""The model (spec section 3): the literal forward pass is the ground truth for the closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_dynamics.data import exact_counts, feature_matrix
from icl_dynamics.model import embed, literal_forward, predict, query_attention
from icl_dynamics.engines.population import per_query

per_query_j = jax.jit(per_query, static_argnums=2)  # one compile per shape instead of one per primitive


def frame(d, K, seed):
    """V (d, K): identity when d == K, else a random orthonormal frame (so nothing may assume v_k = e_k)."""
    V = np.asarray(feature_matrix(d, K, jax.random.PRNGKey(seed)))
    np.testing.assert_allclose(V.T @ V, np.eye(K), atol=1e-12)
    return V


CASES = [  # (K, d, N, probs, include_query)
    (3, 3, 6, [0.5, 0.3, 0.2], False),
    (3, 5, 6, [0.5, 0.3, 0.2], False),
    (4, 6, 5, [0.4, 0.3, 0.2, 0.1], True),
]


@pytest.mark.parametrize("K,d,N,probs,include_query", CASES)
def test_closed_form_matches_monte_carlo_of_literal_forward(K, d, N, probs, include_query):
    """feature_loss[k] and attention[k, :] from per_query (exact count table) against a Monte Carlo of the
    literal forward pass with sampled prompt tokens and tasks w, the query fixed to v_k. Tolerance: 5
    standard errors of the MC mean, estimated from the samples (false alarm ~1e-6 per entry)."""
    rng = np.random.default_rng(100 + K + d)
    p = np.array(probs)
    V = frame(d, K, seed=d)
    Q = rng.normal(scale=0.8, size=(d, d))  # nonzero, not in span{v v^T} when d > K: only V^T Q V matters
    scores = (V.T @ Q @ V).T  # scores[k, n] = v_n^T Q v_k
    table = exact_counts(N, p, 10**6)
    fl, att = per_query_j(jnp.asarray(scores), table, include_query)
    fl, att = np.asarray(fl), np.asarray(att)
    fl_wrong, _ = per_query_j(jnp.asarray(scores.T), table, include_query)

    M = 10_000
    fwd = jax.jit(literal_forward, static_argnums=2)
    rejects_transpose = False
    for k in range(K):
        feat = rng.choice(K, size=(M, N), p=p)
        feat = np.concatenate([feat, np.full((M, 1), k)], axis=1)  # the query is v_k
        w = rng.normal(size=(M, d))
        x = np.moveaxis(V[:, feat], 0, 1)  # (M, d, N+1)
        y = np.einsum("mdi,md->mi", x, w)
        F = np.asarray(fwd(embed(jnp.asarray(x), jnp.asarray(y)), jnp.asarray(Q), include_query))
        err = 0.5 * (F[:, d, N] - y[:, N]) ** 2
        se = err.std(ddof=1) / np.sqrt(M)
        assert abs(err.mean() - fl[k]) <= 5 * se, (k, err.mean(), fl[k], se)
        rejects_transpose |= abs(err.mean() - float(fl_wrong[k])) > 5 * se

        # attention mass by key feature, from a plain numpy softmax over the same sampled tokens
        logits = np.einsum("mdi,de,e->mi", x, Q, V[:, k])  # x_i^T Q x_q, query column last
        if not include_query:
            logits = logits[:, :N]
        a = np.exp(logits - logits.max(1, keepdims=True))
        a = a[:, :N] / a.sum(1, keepdims=True)
        mass = np.stack([(a * (feat[:, :N] == m)).sum(1) for m in range(K)], axis=1)  # (M, K)
        se_a = mass.std(0, ddof=1) / np.sqrt(M)
        assert np.all(np.abs(mass.mean(0) - att[k]) <= 5 * se_a + 1e-12), (k, mass.mean(0), att[k], se_a)
    # the comparison has power: the closed form with scores transposed (a plausible index-order bug) fails
    assert rejects_transpose


@pytest.mark.parametrize("include_query", [False, True])
def test_predict_equals_literal_forward_value_and_gradient(include_query):
    """predict computes only the query column of F; value and dyhat/dQ must equal the literal pass's entry
    [d, N] to round-off (both are short sums of O(1) terms: 1e-12 relative)."""
    rng = np.random.default_rng(7)
    B, d, N = 16, 5, 7
    x = jnp.asarray(rng.normal(size=(B, d, N + 1)))  # generic tokens, not just features
    y = jnp.asarray(rng.normal(size=(B, N + 1)))
    E = embed(x, y)
    assert float(jnp.abs(E[:, d, N]).max()) == 0.0  # the query's label slot is 0
    Q = jnp.asarray(rng.normal(scale=0.7, size=(d, d)))

    lit = jax.jit(literal_forward, static_argnums=2)(E, Q, include_query)[:, d, N]
    pred = jax.jit(predict, static_argnums=2)(E, Q, include_query)
    np.testing.assert_allclose(np.asarray(pred), np.asarray(lit), rtol=1e-12, atol=1e-14)

    g_lit = jax.jit(jax.jacrev(lambda q: literal_forward(E, q, include_query)[:, d, N]))(Q)
    g_pred = jax.jit(jax.jacrev(lambda q: predict(E, q, include_query)))(Q)
    assert float(jnp.abs(g_lit).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(g_pred), np.asarray(g_lit), rtol=1e-12, atol=1e-13)


def test_literal_forward_leaves_other_entries_and_normalises():
    """W^{PV} = [[0,0],[0,1]]: only the label row changes; softmax columns sum to 1 over the N prompt keys."""
    rng = np.random.default_rng(8)
    B, d, N = 4, 3, 5
    E = embed(jnp.asarray(rng.normal(size=(B, d, N + 1))), jnp.asarray(rng.normal(size=(B, N + 1))))
    Q = jnp.asarray(rng.normal(size=(d, d)))
    F = jax.jit(literal_forward)(E, Q)
    np.testing.assert_array_equal(np.asarray(F[:, :d]), np.asarray(E[:, :d]))
    att = jax.jit(query_attention, static_argnums=2)
    a = att(E[:, :d], Q, False)
    np.testing.assert_allclose(np.asarray(a.sum(-1)), 1.0, rtol=1e-14)
    aq = att(E[:, :d], Q, True)
    assert np.all(np.asarray(aq.sum(-1)) < 1.0)  # with the query in the softmax, some mass goes to it


def test_attention_is_finite_for_huge_scores():
    """The max-shifted softmax must not overflow: scores of +-800 (e^800 overflows float64)."""
    S = jnp.asarray(np.random.default_rng(9).choice([-800.0, 800.0], size=(3, 3)))
    for iq in (False, True):
        fl, att = per_query_j(S, exact_counts(4, np.array([0.5, 0.3, 0.2]), 10**6), iq)
        assert np.all(np.isfinite(np.asarray(fl))) and np.all(np.isfinite(np.asarray(att)))


@pytest.mark.parametrize("name", ["linear", "relu"])
@pytest.mark.parametrize("include_query", [False, True])
def test_linear_and_relu_attention(name, include_query):
    """Registered variants in the attend(logits, mult, query_logit, include_query) signature: a_j = mult_j
    phi(l_j) / n_keys with phi the identity or max(., 0) and n_keys = sum(mult) (+1 for the query's column).
    Per token (mult = 1) summed by feature equals the regrouped call with counts as multiplicities (exactly
    the tokens/population engines' use); relu's derivative at 0 is 1/2 (so a zero init trains)."""
    from icl_dynamics.registry import ATTENTION

    rng = np.random.default_rng(11)
    attend = ATTENTION[name]
    phi = (lambda x: x) if name == "linear" else (lambda x: np.maximum(x, 0.0))
    logits, mult = rng.normal(size=(5, 4)), rng.integers(0, 4, size=(5, 4)).astype(float)
    n = mult.sum(-1, keepdims=True) + include_query
    a = np.asarray(attend(jnp.asarray(logits), jnp.asarray(mult), jnp.zeros(5), include_query))
    np.testing.assert_allclose(a, mult * phi(logits) / n, rtol=1e-15)
    feat = np.repeat(np.arange(4), 3)  # 12 tokens, 3 of each feature
    per_token = np.asarray(attend(jnp.asarray(logits[:, feat]), jnp.ones((5, 12)), jnp.zeros(5), include_query))
    grouped = np.asarray(attend(jnp.asarray(logits), jnp.full((5, 4), 3.0), jnp.zeros(5), include_query))
    np.testing.assert_allclose(np.stack([per_token[:, feat == m].sum(-1) for m in range(4)], -1), grouped,
                               rtol=1e-14, atol=1e-16)
    g = jax.grad(lambda x: attend(x, jnp.ones(3), jnp.zeros(()), include_query).sum())(jnp.zeros(3))
    np.testing.assert_allclose(np.asarray(g), (1.0 if name == "linear" else 0.5) / (3 + include_query), rtol=1e-15)
