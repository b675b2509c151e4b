"""Population objective (spec sections 4-5): exact GD on L in the K x K ``scores`` coordinates.

From Q = 0 the gradient stays in span{v_n v_k^T}, so GD on Q is exactly GD on scores; w is integrated out
in closed form. The expectation over prompt-token counts is ``train.expectation``:

- ``exact`` (default): the closed form of spec section 9 (closed_form.py), any N or prompt-length law, at
  a cost independent of N; features of equal probability are computed once, so they stay bit-for-bit equal;
- ``enumerate``: a weighted :class:`CountTable` of every count vector (small K and N; the cross-check);
- ``monte_carlo``: a table of sampled count vectors; ``mean_field``: the single vector n = N p.
The cost depends on K and the table size or quadrature nodes, never on d.

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
import numpy as np

from ..config import RunConfig
from ..data import CountTable, count_table, exact_table_size, feature_probs, seed_key
from ..registry import ATTENTION, ENGINES
from . import Engine, EngineSpec, Metrics, training
from . import closed_form as cf

# The matrix path shifts each query row by its largest score, so e^{s - max} lies in [e^{-spread}, 1] and
# its square in [e^{-2 spread}, 1]. With spread <= 300 every intermediate (and 1/Z <= e^{300}) stays a
# normal float64, so the products keep full relative precision: the result equals the per-entry softmax to
# round-off. Beyond that a prompt missing every high-score feature could underflow, so the exact per-entry
# (log-domain, max-shifted) path runs instead.
SPREAD_MAX = 300.0


class PopStatic(NamedTuple):
    include_query: bool
    attention: str
    expectation: str = "enumerate"
    nodes: int = 0  # quadrature nodes (exact)
    groups: cf.Classes | None = None  # classes of equal probability (exact)


class PopConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    table: CountTable | None  # counts (M, K), weights (M,); None for exact
    law: cf.PromptLaw | None = None  # the prompt length's law; exact only


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


def _closed_form(static: PopStatic, c: PopConsts, scores) -> cf.Stats:
    return cf.stats_kernel(scores, c.probs, c.law, include_query=static.include_query, nodes=static.nodes,
                           groups=static.groups)


def grad(static: PopStatic, c: PopConsts, scores, step):
    """dL/dscores (K, K): GD on Q from 0 is exactly GD on scores (spec section 5)."""
    if static.expectation == "exact":
        return _closed_form(static, c, scores).grad
    def generic(s):
        return jax.grad(population_loss)(s, c.probs, c.table, static.include_query, static.attention)

    if static.attention != "softmax":
        return generic(scores)
    return jax.lax.cond(_matrix_path_ok(static, scores),
                        lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[0], generic, scores)


def observe(static: PopStatic, c: PopConsts, scores) -> Metrics:
    def generic(s):
        return per_query(s, c.table, static.include_query, static.attention)

    if static.expectation == "exact":
        _, feature_loss, attention = _closed_form(static, c, scores)
    elif static.attention != "softmax":
        feature_loss, attention = generic(scores)
    else:
        feature_loss, attention = jax.lax.cond(
            _matrix_path_ok(static, scores),
            lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[1:], generic, scores)
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


SPREAD_MARGIN = 60.0  # score spread the quadrature is sized for beyond the start's; reported at the end


def prompt_law(cfg: RunConfig) -> cf.PromptLaw:
    """``data.prompt_length`` as a law: a fixed N, or {poisson: mean}, or {uniform: [lo, hi]}."""
    n = cfg.data.prompt_length
    if isinstance(n, int):
        return cf.fixed(n)
    if "poisson" in n:
        return cf.poisson(float(n["poisson"]))
    lo, hi = n["uniform"]
    return cf.uniform(lo, hi)


def quadrature_nodes(cfg: RunConfig) -> int:
    """``train.quadrature_nodes``, or the count that covers the initial spread plus SPREAD_MARGIN."""
    if cfg.train.quadrature_nodes is not None:
        return cfg.train.quadrature_nodes
    K = cfg.data.num_features
    return cf.choose_nodes(np.zeros((K, K)), feature_probs(cfg.data), prompt_law(cfg),
                           cfg.model.include_query_in_softmax, margin=SPREAD_MARGIN)


def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = feature_probs(d)
    K = d.num_features
    if t.expectation == "exact":
        consts = PopConsts(jnp.asarray(probs), None, prompt_law(cfg).as_f64())
        static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention, "exact",
                           quadrature_nodes(cfg), cf.classes(probs))
    else:
        table = count_table(t.expectation, d.prompt_length, probs, key=seed_key(cfg.seed, "counts"),
                            samples=t.count_samples, max_exact=t.max_exact_table)
        consts = PopConsts(jnp.asarray(probs), table)
        static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention, t.expectation)
    return Engine("population", static, consts, jnp.zeros((K, K), jnp.float64), grad, observe, *training(cfg))


def shape_key(cfg: RunConfig) -> tuple:
    """N, p, lr and the seed are values (in a mean-field or Monte Carlo table, or the closed form's law);
    an enumerated table's size depends on N (and on which count vectors have non-zero probability, which
    the sweep worker checks); the closed form's node count and prompt-length law kind are static."""
    d, t = cfg.data, cfg.train
    if t.expectation == "exact":
        law = prompt_law(cfg)
        return (d.num_features, "exact", quadrature_nodes(cfg), law.kind, law.size,
                cf.classes(feature_probs(d)))
    size = {"enumerate": ("N", d.prompt_length), "monte_carlo": ("M", t.count_samples), "mean_field": ()}
    return (d.num_features, t.expectation, size[t.expectation])


def sizes(cfg: RunConfig) -> list[tuple[str, str, int]]:
    d, t = cfg.data, cfg.train
    K = d.num_features
    if t.expectation == "enumerate":
        return [("train.expectation", "enumerated table C(N+K-1, K-1) x K",
                 exact_table_size(d.prompt_length, K, t.max_exact_table) * K)]
    if t.expectation == "monte_carlo":
        return [("train.count_samples", "count_samples x K^2", t.count_samples * K * K)]
    if t.expectation == "exact":  # the general path's (rows, nodes, K) temporaries, 4 rows at a time
        return [("train.quadrature_nodes", "quadrature nodes x K x 4 rows x a few",
                 16 * (t.quadrature_nodes or 2048) * K)]
    return []


def report(engine: Engine, params) -> dict:
    """summary.json's ``engine`` entry: for the closed form, its quadrature and an error estimate at the
    final scores (the difference between the node count and half of it, which bounds the error)."""
    st, c = engine.static, engine.consts
    if st.expectation != "exact":
        return {"expectation": st.expectation}
    scores = np.asarray(params)
    law = c.law
    spread = float(np.max(np.max(scores, 1) - np.min(scores, 1)))
    return {"expectation": "exact", "quadrature_nodes": st.nodes,
            "spread_covered": cf.spread_limit(st.nodes, law, st.include_query), "final_spread": spread,
            "quadrature_error": cf.quadrature_error(scores, np.asarray(c.probs), law, st.include_query, st.nodes)}


ENGINES.register("population")(EngineSpec(build, shape_key, sizes, report=report))
