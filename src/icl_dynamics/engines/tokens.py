"""Tokens objective: GD with fresh sampled prompts each step, differentiating the model's forward pass.

Each step draws ``batch_size`` prompts (features, tasks w, labels y = <w, x>) with a key derived from
(seed, step), so any step can be replayed without the steps before it. Metrics come from a fixed set of
evaluation prompts, stratified by query feature (every prompt is evaluated with each v_k as the query),
with the expectation over w taken exactly: E_w (yhat - <w, x_q>)^2 = ||sum_i a_i x_i - x_q||^2.

Every token is one of the K features, so x_i^T Q x_q = G[f_i, f_q] with G = V^T Q V (K, K), and the
tokens of one feature share one score. The forward pass therefore sums the query column's attention per
feature: each prompt reduces to its feature counts (B, K), and the registered attention takes them as
multiplicities. This is the literal query-column computation regrouped (equal to round-off), at O(B N)
for counting plus O(B K) instead of O(B N d) per step, and O(P K^2) instead of O(P N d K) per observation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..config import RunConfig
from ..data import Prompts, feature_matrix, feature_probs, sample_prompts, seed_key
from ..registry import ATTENTION, ENGINES
from . import Engine, EngineSpec, Metrics, training


class TokStatic(NamedTuple):
    N: int
    batch: int
    include_query: bool
    attention: str


class TokConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    V: jnp.ndarray  # (d, K) orthonormal features
    key: jax.Array  # training key; step keys are fold_in(key, step)
    eval_counts: jnp.ndarray  # (P, K) feature counts of the fixed evaluation prompts (counted once)


def feature_counts(feat: jnp.ndarray, K: int) -> jnp.ndarray:
    """(..., N) feature indices -> (..., K) float64 counts of each feature (a scatter-add, O(N))."""
    flat = feat.reshape(-1, feat.shape[-1])
    rows = jnp.arange(flat.shape[0])[:, None]
    counts = jnp.zeros((flat.shape[0], K), jnp.float64).at[rows, flat].add(1.0)
    return counts.reshape(*feat.shape[:-1], K)


def batch_loss(Q, static: TokStatic, c: TokConsts, key):
    """1/2 mean (yhat - <w, x_q>)^2 over a freshly sampled batch."""
    return prompts_loss(Q, static, c, sample_prompts(key, c.probs, static.batch, static.N, c.V.shape[0]))


def prompts_loss(Q, static: TokStatic, c: TokConsts, pr: Prompts):
    """1/2 mean (yhat - <w, x_q>)^2 over the prompts ``pr`` (feat (B, N+1), w (B, d)).

    yhat = sum_i y_i a_i over the prompt tokens, grouped by feature: sum_m u_m A_m with u = V^T w (the label
    of a feature-m token) and A_m the query's total attention on feature-m tokens.
    """
    K = c.V.shape[1]
    G = c.V.T @ Q @ c.V  # G[m, n] = v_m^T Q v_n
    fq = pr.feat[:, -1]  # query features (B,)
    counts = feature_counts(pr.feat[:, :-1], K)  # (B, K)
    u = pr.w @ c.V  # (B, K): y for a token of each feature
    a = ATTENTION[static.attention](G.T[fq], counts, G[fq, fq], static.include_query)  # (B, K)
    yhat = jnp.sum(u * a, axis=-1)
    y_q = jnp.take_along_axis(u, fq[:, None], axis=1)[:, 0]
    return 0.5 * jnp.mean((yhat - y_q) ** 2)


def grad(static: TokStatic, c: TokConsts, Q, step):
    """The gradient of the loss on a fresh batch, drawn with the key fold_in(key, step)."""
    return jax.grad(batch_loss)(Q, static, c, jax.random.fold_in(c.key, step))


def observe(static: TokStatic, c: TokConsts, Q) -> Metrics:
    """Metrics on the evaluation prompts, each taken with every feature as the query.

    For query k, E_w||sum_i a_i x_i - v_k||^2 = (A - e_k)^T V^T V (A - e_k) with A (K,) the per-feature
    attention (V^T V = I here, kept so the identity does not depend on it).
    """
    K = c.probs.shape[0]
    G = c.V.T @ Q @ c.V
    gram = c.V.T @ c.V
    counts = c.eval_counts  # (P, K)
    q_logit = jnp.broadcast_to(jnp.diagonal(G)[:, None], (K, counts.shape[0]))  # (K, P)
    a = ATTENTION[static.attention](jnp.broadcast_to(G.T[:, None, :], (K, *counts.shape)),
                                    jnp.broadcast_to(counts, (K, *counts.shape)), q_logit,
                                    static.include_query)  # (K queries, P, K features)
    resid = a - jnp.eye(K, dtype=Q.dtype)[:, None, :]
    feature_loss = 0.5 * jnp.mean(jnp.einsum("kpm,mn,kpn->kp", resid, gram, resid), axis=1)
    attention = jnp.mean(a, axis=1)
    scores = G.T  # scores[k, n] = v_n^T Q v_k
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = jnp.asarray(feature_probs(d))
    V = feature_matrix(d.dim, d.num_features, seed_key(cfg.seed, "features"))
    eval_feat = jax.random.categorical(seed_key(cfg.seed, "eval"), jnp.log(probs),
                                       shape=(t.eval_prompts, d.prompt_length))
    consts = TokConsts(probs, V, seed_key(cfg.seed, "train"),
                       feature_counts(eval_feat, d.num_features))
    static = TokStatic(d.prompt_length, t.batch_size, cfg.model.include_query_in_softmax, cfg.model.attention)
    return Engine("tokens", static, consts, jnp.zeros((d.dim, d.dim), jnp.float64), grad, observe, *training(cfg))


def shape_key(cfg: RunConfig) -> tuple:
    d, t = cfg.data, cfg.train
    return (d.num_features, d.dim, d.prompt_length, t.batch_size, t.eval_prompts)


def sizes(cfg: RunConfig) -> list[tuple[str, str, int]]:
    d, t = cfg.data, cfg.train
    K, N, dim = d.num_features, d.prompt_length, d.dim
    return [("data.dim", "the d x d parameter, its gradient and the update (3 d^2)", 3 * dim * dim),
            ("train.batch_size", "batch_size x (N+1) x max(d, K) per step", t.batch_size * (N + 1) * max(dim, K)),
            ("train.eval_prompts", "eval_prompts x N x K", t.eval_prompts * N * K)]


def ignored(cfg: RunConfig) -> set[str]:
    """The population engine's expectation knobs: this engine samples prompts instead."""
    return {"train.expectation", "train.count_samples", "train.max_exact_table", "train.quadrature_nodes"}


ENGINES.register("tokens")(EngineSpec(build, shape_key, sizes, rng_key=lambda consts: consts.key, ignored=ignored))
