"""Tokens objective: GD with fresh sampled prompts each step, differentiating the model's forward pass.

Each step draws ``batch_size`` prompts (features, tasks w, labels y = <w, x>) with a key derived from
(seed, step), so any step can be replayed without the steps before it. Metrics come from a fixed set of
evaluation prompts, stratified by query feature (every prompt is evaluated with each v_k as the query),
with the expectation over w taken exactly: E_w (yhat - <w, x_q>)^2 = ||sum_i a_i x_i - x_q||^2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..config import RunConfig
from ..data import feature_matrix, feature_probs, sample_prompts, seed_key
from ..model import ATTENTION, embed, predict
from . import Engine, Metrics, register_engine


class TokStatic(NamedTuple):
    N: int
    batch: int
    include_query: bool
    attention: str


class TokConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    V: jnp.ndarray  # (d, K) orthonormal features
    lr: jnp.ndarray  # ()
    key: jax.Array  # training key; step keys are fold_in(key, step)
    eval_feat: jnp.ndarray  # (P, N) feature indices of the evaluation prompts


def batch_loss(Q, static: TokStatic, c: TokConsts, key):
    """1/2 mean (yhat - <w, x_q>)^2 over a freshly sampled batch."""
    d = c.V.shape[0]
    pr = sample_prompts(key, c.probs, static.batch, static.N, d)
    x = jnp.moveaxis(c.V[:, pr.feat], 0, 1)  # (B, d, N+1)
    y = jnp.einsum("bdi,bd->bi", x, pr.w)
    yhat = predict(embed(x, y), Q, static.include_query, static.attention)
    return 0.5 * jnp.mean((yhat - y[:, -1]) ** 2)


def update(static: TokStatic, c: TokConsts, Q, step):
    g = jax.grad(batch_loss)(Q, static, c, jax.random.fold_in(c.key, step))
    return Q - c.lr * g


def observe(static: TokStatic, c: TokConsts, Q) -> Metrics:
    K = c.probs.shape[0]
    x = c.V[:, c.eval_feat]  # (d, P, N)
    onehot = jax.nn.one_hot(c.eval_feat, K, dtype=Q.dtype)  # (P, N, K)

    def one(k):
        vk = c.V[:, k]
        logits = jnp.einsum("dpi,de,e->pi", x, Q, vk)  # x_i^T Q v_k
        a = ATTENTION[static.attention](logits, jnp.ones_like(logits),
                                        jnp.broadcast_to(vk @ Q @ vk, logits.shape[:1]), static.include_query)
        resid = jnp.einsum("dpi,pi->pd", x, a) - vk[None, :]
        return 0.5 * jnp.mean(jnp.sum(resid**2, -1)), jnp.mean(jnp.einsum("pi,pim->pm", a, onehot), 0)

    feature_loss, attention = jax.lax.map(one, jnp.arange(K))
    scores = (c.V.T @ Q @ c.V).T  # scores[k, n] = v_n^T Q v_k
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


@register_engine("tokens")
def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = jnp.asarray(feature_probs(d))
    V = feature_matrix(d.dim, d.num_features, seed_key(cfg.seed, "features"))
    eval_feat = jax.random.categorical(seed_key(cfg.seed, "eval"), jnp.log(probs),
                                       shape=(t.eval_prompts, d.prompt_length))
    consts = TokConsts(probs, V, jnp.asarray(t.lr, jnp.float64), seed_key(cfg.seed, "train"), eval_feat)
    static = TokStatic(d.prompt_length, t.batch_size, cfg.model.include_query_in_softmax, cfg.model.attention)
    return Engine("tokens", static, consts, jnp.zeros((d.dim, d.dim), jnp.float64), update, observe)
