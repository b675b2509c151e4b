"""Population objective (spec sections 4-5): exact GD on L in the K x K ``scores`` coordinates.

From Q = 0 the gradient stays in span{v_n v_k^T}, so GD on Q is exactly GD on scores; w is integrated out
in closed form and the expectation over prompt-token counts is a weighted :class:`CountTable` (exact
enumeration, Monte Carlo, or mean field). The cost depends on K and the table size, never on d.

Two implementations of one formula:

- :func:`per_query` / :func:`population_loss`: the generic path through the attention registry, with
  gradients by autodiff. Any attention variant; it is the reference.
- :func:`softmax_stats`: softmax attention only, the spec's analytic gradient (section 5) as five
  (M, K) x (K, K) matrix products and no exponential per table entry. ``update`` and ``observe`` use it
  whenever it is exact (see :data:`SPREAD_MAX`), otherwise they fall back to the generic path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..config import RunConfig
from ..data import CountTable, count_table, exact_table_size, feature_probs, seed_key
from ..registry import ATTENTION, ENGINES
from . import Engine, EngineSpec, Metrics, training

# The matrix path shifts each query row by its largest score, so e^{s - max} lies in [e^{-spread}, 1] and
# its square in [e^{-2 spread}, 1]. With spread <= 300 every intermediate (and 1/Z <= e^{300}) stays a
# normal float64, so the products keep full relative precision: the result equals the per-entry softmax to
# round-off. Beyond that a prompt missing every high-score feature could underflow, so the exact per-entry
# (log-domain, max-shifted) path runs instead.
SPREAD_MAX = 300.0


class PopStatic(NamedTuple):
    include_query: bool
    attention: str


class PopConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    table: CountTable  # counts (M, K), weights (M,)


def per_query(scores: jnp.ndarray, table: CountTable, include_query: bool, attention: str = "softmax"):
    """feature_loss (K,) and attention (K, K) for every query feature.

    For query k and counts n, a_m = n_m e^{s[k,m]} / sum_j n_j e^{s[k,j]} and the w-averaged squared error
    is f = (1 - a_k)^2 + sum_{m != k} a_m^2; feature_loss[k] = 1/2 E_counts[f].
    """
    K = scores.shape[0]

    def one(k, row):
        logits = jnp.broadcast_to(row, table.counts.shape)
        a = ATTENTION[attention](logits, table.counts, jnp.broadcast_to(row[k], table.weights.shape),
                                 include_query)  # (M, K)
        others = jnp.where(jnp.arange(a.shape[-1]) == k, 0.0, a)
        f = (1.0 - a[:, k]) ** 2 + jnp.sum(others * others, axis=-1)  # a sum of squares: never < 0
        return 0.5 * table.weights @ f, table.weights @ a

    return jax.vmap(one)(jnp.arange(K), scores)


def population_loss(scores, probs, table, include_query=False, attention="softmax"):
    feature_loss, _ = per_query(scores, table, include_query, attention)
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


def _matrix_path_ok(static: PopStatic, scores) -> jnp.ndarray:
    if static.attention != "softmax":
        return jnp.asarray(False)
    spread = jnp.max(jnp.max(scores, axis=1) - jnp.min(scores, axis=1))
    return _all(spread <= SPREAD_MAX)


def grad(static: PopStatic, c: PopConsts, scores, step):
    """dL/dscores (K, K): GD on Q from 0 is exactly GD on scores (spec section 5)."""
    def generic(s):
        return jax.grad(population_loss)(s, c.probs, c.table, static.include_query, static.attention)

    if static.attention != "softmax":
        return generic(scores)
    return jax.lax.cond(_matrix_path_ok(static, scores),
                        lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[0], generic, scores)


def observe(static: PopStatic, c: PopConsts, scores) -> Metrics:
    def generic(s):
        return per_query(s, c.table, static.include_query, static.attention)

    if static.attention != "softmax":
        feature_loss, attention = generic(scores)
    else:
        feature_loss, attention = jax.lax.cond(
            _matrix_path_ok(static, scores),
            lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[1:], generic, scores)
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = feature_probs(d)
    table = count_table(t.expectation, d.prompt_length, probs, key=seed_key(cfg.seed, "counts"),
                        samples=t.count_samples, max_exact=t.max_exact_table)
    consts = PopConsts(jnp.asarray(probs), table)
    static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention)
    K = d.num_features
    return Engine("population", static, consts, jnp.zeros((K, K), jnp.float64), grad, observe, *training(cfg))


def shape_key(cfg: RunConfig) -> tuple:
    """N, p, lr and the seed are values in a mean-field or Monte Carlo table; an exact table's size depends
    on N (and on which count vectors have non-zero probability, which the sweep worker checks)."""
    d, t = cfg.data, cfg.train
    size = {"exact": ("N", d.prompt_length), "monte_carlo": ("M", t.count_samples), "mean_field": ()}
    return (d.num_features, t.expectation, size[t.expectation])


def sizes(cfg: RunConfig) -> list[tuple[str, str, int]]:
    d, t = cfg.data, cfg.train
    K = d.num_features
    if t.expectation == "exact":
        return [("train.expectation", "exact table C(N+K-1, K-1) x K",
                 exact_table_size(d.prompt_length, K, t.max_exact_table) * K)]
    if t.expectation == "monte_carlo":
        return [("train.count_samples", "count_samples x K^2", t.count_samples * K * K)]
    return []


ENGINES.register("population")(EngineSpec(build, shape_key, sizes))
