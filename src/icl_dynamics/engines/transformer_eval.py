"""The transformer engine's metrics on its fixed evaluation prompts (see transformer.py for what they mean).

Two computations of the same numbers:

- :func:`literal_losses`: each evaluation prompt is embedded (tokens x_i in R^d, the query v_k) and run
  through model.query_column, as in training. Used for Gaussian tokens and with token noise, and by tests
  as the reference.
- :func:`factored_losses` (feature tokens without noise): every token is some v_m, so x_i^T A = (V^T A)[f_i]
  for any matrix A: the logits e_i^T W^{KQ}_h e_q, the values and the labels are gathered from (K,)-sized
  tables instead of (d,)-sized dot products per token, O(P N) per query instead of O(P N d). The per-token
  attention is still computed token by token (nothing is grouped by feature).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..model import head_matrices, query_column


def _attend(static, logits):
    from ..registry import ATTENTION

    return ATTENTION[static.attention](logits, jnp.ones_like(logits), jnp.zeros(logits.shape[:-1], logits.dtype),
                                       False)


def prompt_losses(static, c, mats, X: jnp.ndarray):
    """Per-prompt losses (P,) and the query's attention on the prompt tokens (P, heads, N), literally, on the
    prompts X (P, N+1, d) (query last) with mats = (W^{KQ}, W^{PV}). q_only integrates w (and the label
    noise) out exactly; full uses the evaluation set's sampled w (and label noise)."""
    e = c.eval
    if static.params == "q_only":
        _, a = query_column(X, jnp.zeros(X.shape[:-1], X.dtype)[:, :-1], *mats, static.include_query,
                            static.attention)  # labels do not enter the attention
        a = a[..., : static.N]  # the query's own column carries no label
        coef = jnp.mean(a, axis=1)  # yhat = sum_i c_i y_i, c_i = sum_h a_hi / heads
        r = jnp.einsum("pi,pid->pd", coef, X[:, :-1]) - X[:, -1]
        quad = jnp.sum(r * r, -1) if c.data.root is None else jnp.sum((r @ c.data.root) ** 2, -1)
        if static.flags.label_noise:
            quad = quad + c.data.label_sigma**2 * jnp.sum(coef * coef, -1)
        return 0.5 * quad, a
    y = jnp.einsum("pnd,pd->pn", X[:, :-1], e.w)
    if static.flags.label_noise:
        y = y + c.data.label_sigma * e.xi
    yhat, a = query_column(X, y, *mats, static.include_query, static.attention)
    return 0.5 * (yhat - jnp.einsum("pd,pd->p", X[:, -1], e.w)) ** 2, a[..., : static.N]


def _by_feature(x, seg, K: int):
    """Sums over each prompt's tokens of each feature: x (P, ..., N), seg (P, N) = p K + f_pn -> (P, ..., K).
    A scatter-add, O(P N) (a one-hot product would cost O(P N K))."""
    P, N = seg.shape
    moved = jnp.moveaxis(x, -1, 1).reshape(P * N, -1)  # rows in (p, n) order
    out = jax.ops.segment_sum(moved, seg.reshape(-1), num_segments=P * K)
    return jnp.moveaxis(out.reshape(P, K, *x.shape[1:-1]), 1, -1)


def _segments(feat, K: int):
    return feat + K * jnp.arange(feat.shape[0])[:, None]


def _per_feature(a, seg, K: int):
    """Mean over prompts and heads of the attention on each feature's tokens: a (P, H, N) -> (K,)."""
    return jnp.sum(_by_feature(a, seg, K), axis=(0, 1)) / (a.shape[0] * a.shape[1])


def literal_losses(static, c, mats):
    """(K, P) per-prompt losses for each query feature and attention (K, K), the literal way."""
    e, V = c.eval, c.data.V
    K = V.shape[1]
    base = V.T[e.feat]  # (P, N, d)
    seg = _segments(e.feat, K)

    def query(k):
        X = jnp.concatenate([base, jnp.broadcast_to(V[:, k], (base.shape[0], 1, V.shape[0]))], axis=1)
        if static.flags.token_noise:
            X = X + c.data.token_sigma * e.X
        losses, a = prompt_losses(static, c, mats, X)
        return losses, _per_feature(a, seg, K)

    return jax.lax.map(query, jnp.arange(K))


def factored_losses(static, c, mats):
    """The same as :func:`literal_losses` for feature tokens without token noise, from x_i = v_{f_i}."""
    e, V = c.eval, c.data.V
    w_kq, w_pv = mats
    d, K = V.shape
    feat = e.feat  # (P, N)
    seg = _segments(feat, K)
    G = jnp.einsum("dm,hde,en->hmn", V, w_kq[:, :d, :d], V)  # G[h, m, n] = v_m^T W_xx v_n
    gy = w_kq[:, d, :d] @ V  # (H, K): the label row of W^{KQ} against each query feature
    full = static.params == "full"
    if full:
        uw = e.w @ V  # (P, K): <w, v_m>, the label of a feature-m token
        y = jnp.take_along_axis(uw, feat, axis=1)  # (P, N)
        if static.flags.label_noise:
            y = y + c.data.label_sigma * e.xi
        pv = w_pv[:, d, :d] @ V  # (H, K): row d of W^{PV} on each feature
        val = jnp.transpose(pv[:, feat], (1, 0, 2)) + w_pv[None, :, d, d, None] * y[:, None, :]  # (P, H, N)

    def query(k):
        logits = jnp.transpose(G[:, feat, k], (1, 0, 2))  # (P, H, N): x_i^T W_xx v_k
        if full:
            logits = logits + y[:, None, :] * gy[None, :, k, None]
        if static.include_query:  # the query's own column: e_q^T W e_q, value row d of W^{PV} e_q
            qlogit = jnp.broadcast_to(G[None, :, k, k, None], (feat.shape[0], G.shape[0], 1))
            logits = jnp.concatenate([logits, qlogit], axis=-1)
        a = _attend(static, logits)
        if full:
            yhat = jnp.sum(a[..., : static.N] * val, axis=(1, 2))
            if static.include_query:
                yhat = yhat + jnp.sum(a[..., -1] * pv[None, :, k], axis=1)
            losses = 0.5 * (yhat - uw[:, k]) ** 2
        else:
            coef = jnp.mean(a[..., : static.N], axis=1)  # (P, N)
            r = _by_feature(coef, seg, K) @ V.T - V[:, k]  # sum_i c_i x_i - x_q
            quad = jnp.sum(r * r, -1) if c.data.root is None else jnp.sum((r @ c.data.root) ** 2, -1)
            if static.flags.label_noise:
                quad = quad + c.data.label_sigma**2 * jnp.sum(coef * coef, -1)
            losses = 0.5 * quad
        return losses, _per_feature(a[..., : static.N], seg, K)

    return jax.lax.map(query, jnp.arange(K))


def eval_losses(static, c, params, literal: bool = False):
    """Per-prompt losses, (K, P) per query feature (feature tokens) or (P,) (Gaussian tokens), and attention
    (K, K) (NaN for Gaussian tokens). ``literal`` forces the literal computation (tests)."""
    V = c.data.V
    K = V.shape[1]
    mats = head_matrices(params, V.shape[0])
    if static.flags.gaussian:
        losses, _ = prompt_losses(static, c, mats, c.eval.X)
        return losses, jnp.full((K, K), jnp.nan, V.dtype)
    if literal or static.flags.token_noise:
        return literal_losses(static, c, mats)
    return factored_losses(static, c, mats)
