"""Data model (spec section 2): feature probabilities, features, prompts, and tables of feature counts.

A new distribution over features is one function ``(DataConfig) -> np.ndarray`` plus ``@DISTRIBUTIONS.register(name)`` (registry.py).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln, xlogy

from .config import DataConfig
from .errors import ConfigError

from .registry import DISTRIBUTIONS


@DISTRIBUTIONS.register("balanced")
def balanced_probs(cfg: DataConfig) -> np.ndarray:
    return np.full(cfg.num_features, 1.0 / cfg.num_features)


@DISTRIBUTIONS.register("imbalanced")
def imbalanced_probs(cfg: DataConfig) -> np.ndarray:
    K = cfg.num_features
    p = np.full(K, (1.0 - cfg.dominant_prob) / (K - 1))
    p[0] = cfg.dominant_prob
    return p


@DISTRIBUTIONS.register("zipf")
def zipf_probs(cfg: DataConfig) -> np.ndarray:
    w = np.arange(1, cfg.num_features + 1, dtype=np.float64) ** (-cfg.zipf_exponent)
    return w / w.sum()


def feature_probs(cfg: DataConfig) -> np.ndarray:
    """p (K,), float64, summing to 1."""
    if isinstance(cfg.probs, list):
        p = np.asarray(cfg.probs, dtype=np.float64)
        return p / p.sum()
    return DISTRIBUTIONS[cfg.probs](cfg)


def setting_name(cfg: DataConfig) -> str:
    """'balanced', 'imbalanced' or 'custom' (anything else): decides which phase definitions apply."""
    return setting_of(feature_probs(cfg))


def setting_of(probs: np.ndarray) -> str:
    """'balanced' (all equal), 'imbalanced' (p_1 largest, the rest equal) or 'custom'."""
    p = np.asarray(probs, np.float64)
    if np.allclose(p, p[0]):
        return "balanced"
    if len(p) >= 2 and p[0] > p[1] and np.allclose(p[1:], p[1]):
        return "imbalanced"
    return "custom"


def feature_matrix(d: int, K: int, key: jax.Array) -> jnp.ndarray:
    """V (d, K) with orthonormal columns: the standard basis when d == K, a random orthonormal frame else."""
    if d == K:
        return jnp.eye(K, dtype=jnp.float64)
    g = jax.random.normal(key, (d, K), dtype=jnp.float64)
    q, r = jnp.linalg.qr(g)
    return q * jnp.sign(jnp.diag(r))[None, :]


class Prompts(NamedTuple):
    """A batch of prompts. ``feat`` (B, N+1) holds feature indices, the last column the query's;
    ``w`` (B, d) the tasks."""

    feat: jnp.ndarray
    w: jnp.ndarray


def sample_prompts(key: jax.Array, probs: jnp.ndarray, batch: int, N: int, d: int) -> Prompts:
    k_feat, k_w = jax.random.split(key)
    # inverse-CDF sampling: one uniform per token (categorical's Gumbel trick draws K per token and was
    # 90% of a tokens step)
    feat = jax.random.choice(k_feat, probs.shape[0], shape=(batch, N + 1), p=probs)
    w = jax.random.normal(k_w, (batch, d), dtype=jnp.float64)
    return Prompts(feat, w)


class CountTable(NamedTuple):
    """Weighted feature-count vectors: E_counts[f(n)] = sum_i weights[i] f(counts[i]).

    counts (M, K) float64, weights (M,) float64 summing to 1.
    """

    counts: jnp.ndarray
    weights: jnp.ndarray


def exact_table_size(N: int, K: int, max_size: int | None = None) -> int:
    """C(N+K-1, K-1), the number of count vectors with sum N; ConfigError (the one message for this limit)
    when it exceeds ``max_size``."""
    size = math.comb(N + K - 1, K - 1)
    if max_size is not None and size > max_size:
        raise ConfigError(
            f"train.expectation: 'enumerate' would list C(N+K-1, K-1) = {size:,} count vectors "
            f"(N={N}, K={K}), over train.max_exact_table={max_size:,}; use train.expectation=exact")
    return size


def exact_counts(N: int, probs: np.ndarray, max_size: int) -> CountTable:
    """Every count vector with sum N, with its multinomial probability (zero-probability ones dropped)."""
    K = len(probs)
    exact_table_size(N, K, max_size)
    # stars and bars: choose K-1 bar positions among N+K-1 slots
    bars = np.array(list(itertools.combinations(range(N + K - 1), K - 1)), dtype=np.int64).reshape(-1, K - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), N + K - 1)], axis=1)
    counts = np.diff(edges, axis=1) - 1
    logw = gammaln(N + 1) - gammaln(counts + 1).sum(1) + xlogy(counts, probs[None, :]).sum(1)
    w = np.exp(logw)
    keep = w > 0
    counts, w = counts[keep], w[keep]
    return CountTable(jnp.asarray(counts, jnp.float64), jnp.asarray(w / w.sum(), jnp.float64))


def monte_carlo_counts(key: jax.Array, N: int, probs: jnp.ndarray, samples: int) -> CountTable:
    """``samples`` i.i.d. Multinomial(N, p) count vectors, equally weighted. Host-side (``key`` concrete).

    numpy's sampler, seeded by ``key``: it costs O(samples K) and nothing to compile, where
    ``jax.random.multinomial`` takes seconds of compilation on every new shape.
    """
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel())
    p = np.asarray(probs, dtype=np.float64)
    counts = rng.multinomial(int(N), p / p.sum(), size=int(samples))
    return CountTable(jnp.asarray(counts, jnp.float64), jnp.full((samples,), 1.0 / samples, jnp.float64))


def mean_field_counts(N: int, probs: np.ndarray) -> CountTable:
    """The large-N limit: the single (fractional) count vector n = N p."""
    return CountTable(jnp.asarray(N * np.asarray(probs), jnp.float64)[None, :], jnp.ones((1,), jnp.float64))


def count_table(kind: str, N: int, probs: np.ndarray, *, key: jax.Array, samples: int,
                max_exact: int) -> CountTable:
    if kind == "enumerate":
        return exact_counts(N, probs, max_exact)
    if kind == "monte_carlo":
        return monte_carlo_counts(key, N, jnp.asarray(probs), samples)
    if kind == "mean_field":
        return mean_field_counts(N, probs)
    raise ConfigError(f"unknown train.expectation '{kind}'")


_PURPOSES = {"counts": 1, "features": 2, "train": 3, "eval": 4, "init": 5}


def seed_key(seed: int, purpose: str) -> jax.Array:
    """An independent key per purpose, so adding a new random draw never shifts an existing one."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), _PURPOSES[purpose])


# --- relaxations of the paper's data (spec section 8) ------------------------------------------------------


def features_of(cfg: DataConfig, seed: int) -> jnp.ndarray:
    """V (d, K), float64, from ``data.features`` and the seed (key purpose 'features'), the same V for every
    engine: orthonormal (:func:`feature_matrix`); random_unit (columns i.i.d. uniform on the unit sphere);
    gram (V = U L^T with U the orthonormal frame and L the Cholesky factor of data.feature_gram, so
    V^T V = feature_gram)."""
    d, K, key = cfg.dim, cfg.num_features, seed_key(seed, "features")
    if cfg.features == "random_unit":
        g = jax.random.normal(key, (d, K), dtype=jnp.float64)
        return g / jnp.linalg.norm(g, axis=0, keepdims=True)
    U = feature_matrix(d, K, key)
    if cfg.features == "gram":
        L = np.linalg.cholesky(np.asarray(cfg.feature_gram, dtype=np.float64))
        return U @ jnp.asarray(L.T)
    return U


def gram_of(cfg: DataConfig, V: jnp.ndarray) -> jnp.ndarray | None:
    """G = V^T V (K, K) for non-orthonormal features; None (the identity, exactly) for orthonormal ones."""
    return None if cfg.features == "orthonormal" else V.T @ V


def _sym_power(G: np.ndarray, power: float) -> np.ndarray:
    vals, vecs = np.linalg.eigh(G)
    return (vecs * vals**power) @ vecs.T


def task_gram(cfg: DataConfig, G: jnp.ndarray | None) -> jnp.ndarray | None:
    """H = V^T Sigma_w V (K, K), the covariance of the feature labels u = V^T w, for ``data.task_cov`` given
    G = V^T V (None: orthonormal features). None when w ~ N(0, I) (H = G then). Sigma_w = V_o diag(lambda)
    V_o^T + (I - V_o V_o^T) with V_o = V G^{-1/2}, the symmetric orthonormalisation of V (V_o = V for
    orthonormal features), so H = G^{1/2} diag(lambda) G^{1/2}, and H = diag(lambda) for orthonormal V."""
    if cfg.task_cov == "identity":
        return None
    lam = np.asarray(cfg.task_cov, dtype=np.float64)
    if G is None:
        return jnp.asarray(np.diag(lam))
    half = _sym_power(np.asarray(G), 0.5)
    return jnp.asarray(half @ np.diag(lam) @ half)


def task_root(cfg: DataConfig, V: jnp.ndarray) -> jnp.ndarray | None:
    """Sigma_w^{1/2} (d, d) (see :func:`task_gram`), which maps z ~ N(0, I_d) to w; None for 'identity'."""
    if cfg.task_cov == "identity":
        return None
    lam = np.asarray(cfg.task_cov, dtype=np.float64)
    Vn = np.asarray(V)
    Vo = Vn if cfg.features == "orthonormal" else Vn @ _sym_power(Vn.T @ Vn, -0.5)
    return jnp.asarray((Vo * np.sqrt(lam)) @ Vo.T + np.eye(Vn.shape[0]) - Vo @ Vo.T)


class DataArrays(NamedTuple):
    """What sampling needs, as arrays (values: they never fix shapes). root, token_scale: None when off."""

    probs: jnp.ndarray  # (K,)
    V: jnp.ndarray  # (d, K)
    root: jnp.ndarray | None  # (d, d) Sigma_w^{1/2}
    label_sigma: jnp.ndarray  # ()
    token_sigma: jnp.ndarray  # ()
    token_scale: jnp.ndarray | None  # (d,) sqrt of data.token_cov (gaussian tokens)


class DataFlags(NamedTuple):
    """The code paths sampling takes (static)."""

    gaussian: bool = False
    label_noise: bool = False
    token_noise: bool = False


def data_arrays(cfg: DataConfig, seed: int) -> tuple[DataArrays, DataFlags]:
    V = features_of(cfg, seed)
    root = task_root(cfg, V)
    scale = None
    if cfg.tokens == "gaussian":
        cov = np.ones(cfg.dim) if cfg.token_cov == "identity" else np.asarray(cfg.token_cov, np.float64)
        scale = jnp.asarray(np.sqrt(cov))
    arrays = DataArrays(jnp.asarray(feature_probs(cfg)), V, root, jnp.asarray(cfg.label_noise, jnp.float64),
                        jnp.asarray(cfg.token_noise, jnp.float64), scale)
    return arrays, DataFlags(cfg.tokens == "gaussian", cfg.label_noise > 0, cfg.token_noise > 0)


class TokenBatch(NamedTuple):
    """Sampled prompts as tokens: X (B, N+1, d) the tokens (query last), y (B, N) the prompt labels,
    w (B, d) the tasks, feat (B, N+1) the feature of each token (None for gaussian tokens). The target is
    <w, x_q> = X[:, -1] @ w (noiseless)."""

    X: jnp.ndarray
    y: jnp.ndarray
    w: jnp.ndarray
    feat: jnp.ndarray | None


def sample_batch(key: jax.Array, a: DataArrays, flags: DataFlags, batch: int, N: int) -> TokenBatch:
    """``batch`` prompts of N tokens and a query. The feature draws and standard-normal tasks are exactly
    :func:`sample_prompts`'s (so with every relaxation off they are the tokens engine's prompts); each
    relaxation draws from its own key fold_in(key, j), so switching one on leaves the others' draws alone."""
    d = a.V.shape[0]
    if flags.gaussian:  # the tasks as sample_prompts draws them; no features
        z = jax.random.normal(jax.random.split(key)[1], (batch, d), dtype=jnp.float64)
        X = jax.random.normal(jax.random.fold_in(key, 1), (batch, N + 1, d), jnp.float64) * a.token_scale
        feat = None
    else:
        pr = sample_prompts(key, a.probs, batch, N, d)
        X, feat, z = a.V.T[pr.feat], pr.feat, pr.w
    if flags.token_noise:
        X = X + a.token_sigma * jax.random.normal(jax.random.fold_in(key, 2), X.shape, jnp.float64)
    w = z if a.root is None else z @ a.root  # root is symmetric
    y = jnp.einsum("bnd,bd->bn", X[:, :-1], w)
    if flags.label_noise:
        y = y + a.label_sigma * jax.random.normal(jax.random.fold_in(key, 3), y.shape, jnp.float64)
    return TokenBatch(X, y, w, feat)
