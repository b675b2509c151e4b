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


_PURPOSES = {"counts": 1, "features": 2, "train": 3, "eval": 4}


def seed_key(seed: int, purpose: str) -> jax.Array:
    """An independent key per purpose, so adding a new random draw never shifts an existing one."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), _PURPOSES[purpose])
