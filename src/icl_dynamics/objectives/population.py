"""Population objective (spec sections 4-5): exact GD on L in the K x K ``scores`` coordinates.

From Q = 0 the gradient stays in span{v_n v_k^T}, so GD on Q is exactly GD on scores; w is integrated out
in closed form and the expectation over prompt-token counts is a weighted :class:`CountTable` (exact
enumeration, Monte Carlo, or mean field). The cost depends on K and the table size, never on d.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..config import RunConfig
from ..data import CountTable, count_table, feature_probs, seed_key
from ..model import ATTENTION
from . import Engine, Metrics, register_engine


class PopStatic(NamedTuple):
    include_query: bool
    attention: str


class PopConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    table: CountTable  # counts (M, K), weights (M,)
    lr: jnp.ndarray  # ()


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
        f = 1.0 - 2.0 * a[:, k] + jnp.sum(a * a, axis=-1)
        return 0.5 * table.weights @ f, table.weights @ a

    return jax.vmap(one)(jnp.arange(K), scores)


def population_loss(scores, probs, table, include_query=False, attention="softmax"):
    feature_loss, _ = per_query(scores, table, include_query, attention)
    return probs @ feature_loss


def update(static: PopStatic, c: PopConsts, scores, step):
    g = jax.grad(population_loss)(scores, c.probs, c.table, static.include_query, static.attention)
    return scores - c.lr * g


def observe(static: PopStatic, c: PopConsts, scores) -> Metrics:
    feature_loss, attention = per_query(scores, c.table, static.include_query, static.attention)
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


@register_engine("population")
def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = feature_probs(d)
    table = count_table(t.expectation, d.prompt_length, probs, key=seed_key(cfg.seed, "counts"),
                        samples=t.count_samples, max_exact=t.max_exact_table)
    consts = PopConsts(jnp.asarray(probs), table, jnp.asarray(t.lr, jnp.float64))
    static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention)
    K = d.num_features
    return Engine("population", static, consts, jnp.zeros((K, K), jnp.float64), update, observe)
