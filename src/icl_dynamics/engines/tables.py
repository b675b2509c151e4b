"""Expectations over a table of count vectors (enumerate, monte_carlo, mean_field): the population engine's
table paths. Two implementations of one formula:

- :func:`per_query` / :func:`population_loss`: the generic path through the attention registry, with
  gradients by autodiff. Any attention variant and the relaxations; it is the reference.
- :func:`softmax_stats`: softmax attention only, the spec's analytic gradient (section 5) as five
  (M, K) x (K, K) matrix products and no exponential per table entry, exact when every row's spread is at
  most :data:`SPREAD_MAX`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..data import CountTable
from ..registry import ATTENTION

# The matrix path shifts each query row by its largest score, so e^{s - max} lies in [e^{-spread}, 1] and
# its square in [e^{-2 spread}, 1]. With spread <= 300 every intermediate (and 1/Z <= e^{300}) stays a
# normal float64, so the products keep full relative precision: the result equals the per-entry softmax to
# round-off. Beyond that a prompt missing every high-score feature could underflow, so the exact per-entry
# (log-domain, max-shifted) path runs instead.
SPREAD_MAX = 300.0


def per_query(scores: jnp.ndarray, table: CountTable, include_query: bool, attention: str = "softmax",
              H: jnp.ndarray | None = None, sigma2: jnp.ndarray | None = None):
    """feature_loss (K,) and attention (K, K) for every query feature.

    For query k and counts n, a_m = n_m e^{s[k,m]} / sum_j n_j e^{s[k,j]} and the w-averaged squared error
    is f = (1 - a_k)^2 + sum_{m != k} a_m^2; feature_loss[k] = 1/2 E_counts[f]. With a loss matrix H (spec
    section 8) f = (a - e_k)^T H (a - e_k), and label noise adds sigma2 sum_i a_i^2 = sigma2 sum_m a_m^2 / n_m
    (the n_m tokens of feature m share its mass equally).
    """
    K = scores.shape[0]
    if H is not None or sigma2 is not None:
        return _per_query_relaxed(scores, table, include_query, attention, H, sigma2)

    def one(k, row):
        logits = jnp.broadcast_to(row, table.counts.shape)
        a = ATTENTION[attention](logits, table.counts, jnp.broadcast_to(row[k], table.weights.shape),
                                 include_query)  # (M, K)
        others = jnp.where(jnp.arange(a.shape[-1]) == k, 0.0, a)
        f = (1.0 - a[:, k]) ** 2 + jnp.sum(others * others, axis=-1)  # a sum of squares: never < 0
        return 0.5 * table.weights @ f, table.weights @ a

    return jax.vmap(one)(jnp.arange(K), scores)


def _per_query_relaxed(scores, table: CountTable, include_query: bool, attention: str, H, sigma2):
    K = scores.shape[0]
    n = table.counts
    inv_n = jnp.where(n > 0, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)

    def one(k, row):
        logits = jnp.broadcast_to(row, n.shape)
        a = ATTENTION[attention](logits, n, jnp.broadcast_to(row[k], table.weights.shape), include_query)
        r = a - jax.nn.one_hot(k, K, dtype=a.dtype)
        f = jnp.sum(r * r, -1) if H is None else jnp.einsum("mi,ij,mj->m", r, H, r)
        if sigma2 is not None:
            f = f + sigma2 * jnp.sum(a * a * inv_n, -1)
        return 0.5 * table.weights @ f, table.weights @ a

    return jax.vmap(one)(jnp.arange(K), scores)


def population_loss(scores, probs, table, include_query=False, attention="softmax", H=None, sigma2=None):
    feature_loss, _ = per_query(scores, table, include_query, attention, H, sigma2)
    return probs @ feature_loss


def softmax_stats(scores, probs, table: CountTable, include_query: bool):
    """Softmax attention by matrix products: (grad (K, K), feature_loss (K,), attention (K, K)).

    With E = e^{s - rowmax} (K, K) and counts n (M, K): Z = n E^T (+ diag E with the query), a_ikm =
    n_im E_km / Z_ik, so every expectation over the table is a product of (M, K) and (K, K) matrices:
    attention = E * ((w/Z)^T n), sum_m a^2 = (n^2 (E^2)^T) / Z^2, and the spec's gradient
    p_k E_w[a_j^2 - delta_jk a_j - a_j (sum_m a_m^2 - a_k)] (plus the query column's term). Exact to
    round-off only when every row's spread is <= SPREAD_MAX (see there).
    """
    n, w = table.counts, table.weights
    E = jnp.exp(scores - jnp.max(scores, axis=1, keepdims=True))  # (K, K), in (0, 1]
    Ed = jnp.diagonal(E)  # e^{s_kk - max}: the own feature's, and the query column's, weight
    Z = n @ E.T  # (M, K): Z[i, k] for query k
    if include_query:
        Z = Z + Ed[None, :]
    R = 1.0 / Z
    n2 = n * n
    akk = n * Ed[None, :] * R  # a_ikk, (M, K)
    sq = (n2 @ (E * E).T) * (R * R)  # sum_m a_ikm^2, (M, K)
    wR = w[:, None] * R
    attention = E * (wR.T @ n)  # (K, K)
    # (1 - a_k)^2 + sum_{m != k} a_m^2, clamped so round-off near convergence cannot go below zero
    feature_loss = 0.5 * (w @ ((1.0 - akk) ** 2 + jnp.maximum(sq - akk * akk, 0.0)))
    # the delta_jk term needs only attention's diagonal, E_kk (w/Z)^T n_k: O(M K), so a caller that wants
    # only the gradient (update) leaves the attention product to dead-code elimination
    own = Ed * (w @ (R * n))
    grad = (E * E) * ((wR * R).T @ n2) - E * ((wR * (sq - akk)).T @ n) - jnp.diag(own)
    if include_query:  # the query column: df/dz_q = 2 a_q (a_k - sum a_m^2), a_q = E_kk / Z
        grad = grad + jnp.diag(Ed * (w @ (R * (akk - sq))))
    return probs[:, None] * grad, feature_loss, attention


@jax.custom_batching.custom_vmap
def _all(pred):
    return pred


@_all.def_vmap
def _all_vmap(axis_size, in_batched, pred):
    # Under vmap (sweeps) every member takes one branch, so lax.cond stays a branch instead of becoming a
    # select that would run both: the matrix path only if it is exact for all members.
    return jnp.all(pred), False
