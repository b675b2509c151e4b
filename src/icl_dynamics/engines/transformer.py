"""Transformer engine: the model as written (spec section 3), trained on sampled prompts, nothing regrouped.

``train.engine=transformer``. The tokens engine stays the fast, regrouped path of the paper's model; this
one trains the literal model and is the engine for what the reduction cannot compute (spec section 8): token
noise, Gaussian tokens, a trained W^{PV}, random init, several heads (and any optimizer).

Tokens are d-dimensional vectors; the forward pass is F(E) = E + sum_h W^{PV}_h E attend(E^T W^{KQ}_h E) and
the prediction is yhat = F[d, N], computed from the query column (model.query_column; the other columns of a
one-layer model do not enter yhat). Each step draws ``train.batch_size`` fresh prompts with the key
fold_in(key, step), so any step replays without the steps before it; with every relaxation off the prompts
are the tokens engine's, drawn from the same keys.

Parameters (``model.params``): {"Q": (heads, d, d)} for q_only (W^{KQ}_h = [[Q_h, 0], [0, 0]], W^{PV}_h the
paper's [[0, 0], [0, 1]] / heads), or {"W_KQ", "W_PV"}: (heads, d+1, d+1) each, for full.

Metrics, from fixed evaluation prompts (key purpose 'eval'; with features tokens the tokens engine's prompts),
each evaluated with every feature v_k as the query (plus its token noise):

- feature_loss[k] = 1/2 E[(yhat - <w, x_q>)^2 | x_q = v_k]. With q_only, yhat = sum_i c_i y_i with
  c_i = sum_h a_hi / heads independent of w, so w and the label noise are integrated out exactly:
  1/2 (r^T Sigma_w r + sigma^2 sum_i c_i^2), r = sum_i c_i x_i - x_q. With full params the scores depend on
  the labels, and one fixed task w (and label noise) per evaluation prompt is sampled instead.
- loss = sum_k p_k feature_loss[k].
- scores[k, n] = v_n^T Q_eff v_k, Q_eff = sum_h W^{KQ}_h[:d, :d], the token-to-token block summed over
  heads. heads = 1, q_only: the paper's scores. heads > 1: the sum of the heads' logits v_n^T Q_h v_k, no one
  head's (each head's own block is in the parameters). full: the logit between a feature-n key and a
  feature-k query without the label terms; the label row and column of W^{KQ} (the logit gains
  y_i W^{KQ}[d, :d] x_q) and all of W^{PV} are not in it.
- attention[k, n] = the query's total attention on feature-n prompt tokens, averaged over the evaluation
  prompts and over heads (linear/relu attention: the normalised scores, which may be negative and need not
  sum to 1; with the query in the softmax, its own column's share is left out).

The evaluation uses x_i = v_{f_i} to gather logits from K-sized tables (transformer_eval.py), the same numbers
as the literal pass at O(P N) per query instead of O(P N d); with token noise it runs the literal pass.

With ``data.tokens=gaussian`` there are no features in the prompts: loss is the mean over the evaluation
prompts (each with its own Gaussian query), feature_loss and attention are filled with NaN, scores is still
V^T Q_eff^T V (V from data.features); the engine's report says so.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..config import RunConfig
from ..data import DataArrays, DataFlags, TokenBatch, data_arrays, sample_batch, seed_key
from ..model import head_matrices, paper_value, query_column
from ..registry import ENGINES
from . import Engine, EngineSpec, Metrics, training
from .transformer_eval import eval_losses


class TfStatic(NamedTuple):
    N: int
    batch: int
    include_query: bool
    attention: str
    params: str  # q_only | full
    heads: int
    flags: DataFlags


class EvalSet(NamedTuple):
    """The fixed evaluation prompts. feat (P, N) int (features tokens; None for gaussian); X (P, N+1, d)
    tokens: the prompt tokens' noise plus, in the last row, the query's noise (features tokens; None without
    token noise) or the Gaussian tokens with their query; w (P, d) and xi (P, N) the sampled tasks and label
    noise (full params; None otherwise)."""

    feat: jnp.ndarray | None
    X: jnp.ndarray | None
    w: jnp.ndarray | None
    xi: jnp.ndarray | None


class TfConsts(NamedTuple):
    data: DataArrays
    key: jax.Array  # training key; step keys are fold_in(key, step)
    eval: EvalSet


def batch_loss(params, static: TfStatic, c: TfConsts, b: TokenBatch):
    """1/2 mean (yhat - <w, x_q>)^2 over the prompts ``b``."""
    d = b.X.shape[-1]
    w_kq, w_pv = head_matrices(params, d)
    yhat, _ = query_column(b.X, b.y, w_kq, w_pv, static.include_query, static.attention)
    target = jnp.einsum("bd,bd->b", b.X[:, -1], b.w)
    return 0.5 * jnp.mean((yhat - target) ** 2)


def grad(static: TfStatic, c: TfConsts, params, step):
    """The gradient on a fresh batch drawn with the key fold_in(key, step)."""
    b = sample_batch(jax.random.fold_in(c.key, step), c.data, static.flags, static.batch, static.N)
    return jax.grad(batch_loss)(params, static, c, b)


def observe(static: TfStatic, c: TfConsts, params) -> Metrics:
    V = c.data.V
    K = V.shape[1]
    w_kq, _ = head_matrices(params, V.shape[0])
    scores = (V.T @ jnp.sum(w_kq[:, :-1, :-1], axis=0) @ V).T  # scores[k, n] = v_n^T Q_eff v_k
    losses, attention = eval_losses(static, c, params)
    if static.flags.gaussian:
        return Metrics(jnp.mean(losses), jnp.full((K,), jnp.nan, V.dtype), scores, attention)
    feature_loss = jnp.mean(losses, axis=1)
    return Metrics(c.data.probs @ feature_loss, feature_loss, scores, attention)


def init_params(cfg: RunConfig) -> dict:
    """Zero (the paper) or i.i.d. N(0, init_scale^2 / d) entries from the seed (key purpose 'init'); with
    params=full, W^{PV} starts at the paper's value / heads plus that noise."""
    d, H, s = cfg.data.dim, cfg.model.heads, cfg.model.init_scale
    k_kq, k_pv = jax.random.split(seed_key(cfg.seed, "init"))

    def noise(key, n):
        if s == 0:
            return jnp.zeros((H, n, n), jnp.float64)
        return (s / np.sqrt(d)) * jax.random.normal(key, (H, n, n), jnp.float64)

    if cfg.model.params == "q_only":
        return {"Q": noise(k_kq, d)}
    return {"W_KQ": noise(k_kq, d + 1), "W_PV": paper_value(d, H) + noise(k_pv, d + 1)}


def eval_set(cfg: RunConfig, a: DataArrays, flags: DataFlags) -> EvalSet:
    """The fixed evaluation prompts (key purpose 'eval'; the features are drawn as the tokens engine draws
    its evaluation prompts, and each other draw has its own fold_in(key, j))."""
    d, t = cfg.data, cfg.train
    return _draw_eval(seed_key(cfg.seed, "eval"), a, flags, t.eval_prompts, d.prompt_length,
                      cfg.model.params == "full")


@partial(jax.jit, static_argnums=(2, 3, 4, 5))  # one compilation instead of one per random primitive
def _draw_eval(key, a: DataArrays, flags: DataFlags, P: int, N: int, full: bool) -> EvalSet:
    dim = a.V.shape[0]
    feat = X = w = xi = None
    if flags.gaussian:
        X = jax.random.normal(jax.random.fold_in(key, 1), (P, N + 1, dim), jnp.float64) * a.token_scale
        if flags.token_noise:
            X = X + a.token_sigma * jax.random.normal(jax.random.fold_in(key, 2), X.shape, jnp.float64)
    else:
        feat = jax.random.categorical(key, jnp.log(a.probs), shape=(P, N))
        if flags.token_noise:  # the unit noise, scaled by token_sigma where used
            X = jax.random.normal(jax.random.fold_in(key, 2), (P, N + 1, dim), jnp.float64)
    if full:
        w = jax.random.normal(jax.random.fold_in(key, 4), (P, dim), jnp.float64)
        w = w if a.root is None else w @ a.root
        if flags.label_noise:
            xi = jax.random.normal(jax.random.fold_in(key, 3), (P, N), jnp.float64)
    return EvalSet(feat, X, w, xi)


def build(cfg: RunConfig) -> Engine:
    d, t, m = cfg.data, cfg.train, cfg.model
    arrays, flags = data_arrays(d, cfg.seed)
    consts = TfConsts(arrays, seed_key(cfg.seed, "train"), eval_set(cfg, arrays, flags))
    static = TfStatic(d.prompt_length, t.batch_size, m.include_query_in_softmax, m.attention, m.params, m.heads,
                      flags)
    return Engine("transformer", static, consts, init_params(cfg), grad, observe, *training(cfg))


def shape_key(cfg: RunConfig) -> tuple:
    """Shapes and code paths; every value (V, Sigma_w, noise levels, probabilities, lr, seed) is traced."""
    d, t, m = cfg.data, cfg.train, cfg.model
    return (d.num_features, d.dim, d.prompt_length, t.batch_size, t.eval_prompts, m.params, m.heads, d.tokens,
            d.task_cov != "identity", d.label_noise > 0, d.token_noise > 0)


def sizes(cfg: RunConfig) -> list[tuple[str, str, int]]:
    d, t, m = cfg.data, cfg.train, cfg.model
    K, N, dim, H = d.num_features, d.prompt_length, d.dim, m.heads
    per_token = (dim + 1) * (2 + H)  # embedded token, its values, and per-head logits and attention
    return [("model.heads", "parameters, gradient, optimizer state (4 heads (d+1)^2 x 2)", 8 * H * (dim + 1) ** 2),
            ("train.batch_size", "batch_size x (N+1) x (d+1) x (2 + heads) per step",
             t.batch_size * (N + 1) * per_token),
            ("train.eval_prompts", "eval_prompts x (N+1) x (d+1) x (2 + heads + K / (d+1)), evaluation",
             t.eval_prompts * (N + 1) * (per_token + K))]


def report(engine: Engine, params) -> dict:
    """summary.json's ``engine`` entry: the parameterization and how the metrics were estimated, with the
    standard error of the final loss estimate over the evaluation prompts."""
    st, c = engine.static, engine.consts
    with jax.enable_x64(True):
        losses, _ = jax.jit(eval_losses, static_argnums=0)(st, c, params)
        losses = np.asarray(losses)
    P = losses.shape[-1]
    out = {"params": st.params, "heads": st.heads, "eval_prompts": P,
           "w": "integrated out exactly" if st.params == "q_only" else "one sampled task per evaluation prompt"}
    if st.flags.gaussian:
        out["loss_standard_error"] = float(losses.std(ddof=1) / np.sqrt(P)) if P > 1 else None
        out["note"] = ("data.tokens=gaussian: prompts hold no features, so per-feature quantities are omitted "
                       "(feature_loss and attention are NaN, phases do not apply); loss is the mean over the "
                       "evaluation prompts; scores = V^T Q_eff V with V from data.features")
    else:
        p = np.asarray(c.data.probs)
        out["loss_standard_error"] = (float(np.sqrt(np.sum(p**2 * losses.var(axis=1, ddof=1)) / P)) if P > 1
                                      else None)
    return out


def ignored(cfg: RunConfig) -> set[str]:
    """The population engine's expectation knobs (this engine samples prompts), and with Gaussian tokens
    the feature probabilities (no token is drawn from the features)."""
    out = {"train.expectation", "train.count_samples", "train.max_exact_table", "train.quadrature_nodes"}
    if cfg.data.tokens == "gaussian":
        out |= {"data.probs", "data.dominant_prob", "data.zipf_exponent"}
    return out


ENGINES.register("transformer")(EngineSpec(build, shape_key, sizes, rng_key=lambda consts: consts.key,
                                           report=report, ignored=ignored))
