"""An independent numpy implementation of spec sections 4-5, used as ground truth by the tests.

Nothing here imports the package's objectives: counts are enumerated recursively, the multinomial pmf comes
from math.lgamma, and the gradient is the spec's analytic formula (not autodiff).
"""

from __future__ import annotations

import math

import numpy as np
import pytest


def compositions(N: int, K: int):
    """Every (n_1..n_K) of non-negative ints with sum N, by recursion on the first entry."""
    if K == 1:
        yield (N,)
        return
    for first in range(N + 1):
        for rest in compositions(N - first, K - 1):
            yield (first, *rest)


def multinomial_pmf(n, p) -> float:
    if any(ni > 0 and pi == 0 for ni, pi in zip(n, p)):
        return 0.0
    logp = math.lgamma(sum(n) + 1) - sum(math.lgamma(ni + 1) for ni in n)
    logp += sum(ni * math.log(pi) for ni, pi in zip(n, p) if ni > 0)
    return math.exp(logp)


def exact_table(N: int, p) -> tuple[np.ndarray, np.ndarray]:
    """counts (M, K) float, weights (M,) from the pmf (no renormalisation: they sum to 1 to round-off)."""
    rows = list(compositions(N, len(p)))
    return np.array(rows, dtype=np.float64), np.array([multinomial_pmf(r, p) for r in rows])


def masses(scores: np.ndarray, counts: np.ndarray, include_query: bool = False):
    """Attention masses for every query k and count vector: a[k, i, m] = n_m e^{s_km} / Z (K, M, K), and the
    query's own mass aq[k, i] (zero unless include_query)."""
    s = scores - scores.max(axis=1, keepdims=True)  # shift per row: softmax is invariant
    e = np.exp(s)  # (K, K)
    num = counts[None, :, :] * e[:, None, :]  # (K, M, K)
    own = np.diag(e)[:, None] * np.ones(counts.shape[0])[None, :]  # e^{s_kk}, the query's own column
    Z = num.sum(-1) + (own if include_query else 0.0)
    aq = own / Z if include_query else np.zeros_like(Z)
    return num / Z[..., None], aq


def feature_loss(scores, counts, weights, include_query=False) -> np.ndarray:
    """feature_loss[k] = 1/2 E[(1 - a_k)^2 + sum_{m != k} a_m^2] (K,)."""
    a, _ = masses(scores, counts, include_query)
    K = scores.shape[0]
    f = np.empty((K, counts.shape[0]))
    for k in range(K):
        f[k] = (1 - a[k, :, k]) ** 2 + (a[k] ** 2).sum(-1) - a[k, :, k] ** 2
    return 0.5 * f @ weights


def attention(scores, counts, weights, include_query=False) -> np.ndarray:
    a, _ = masses(scores, counts, include_query)
    return np.einsum("kim,i->km", a, weights)


def loss(scores, p, counts, weights, include_query=False) -> float:
    return float(np.asarray(p) @ feature_loss(scores, counts, weights, include_query))


def grad(scores, p, counts, weights, include_query=False) -> np.ndarray:
    """Spec section 5: dL/dscores[k, j] = p_k/2 E[2 a_j ((a_j - delta_jk) - (sum_m a_m^2 - a_k))].

    With the query in the softmax, its own column z_q = scores[k, k] adds df/dz_q = 2 a_q (a_k - sum a_m^2)
    to entry [k, k] (same chain rule, the query column carrying no label).
    """
    a, aq = masses(scores, counts, include_query)
    K = scores.shape[0]
    g = np.zeros_like(scores)
    for k in range(K):
        ak = a[k, :, k]
        sq = (a[k] ** 2).sum(-1)
        dfdz = 2 * a[k] * ((a[k] - np.eye(K)[k][None, :]) - (sq - ak)[:, None])  # (M, K)
        g[k] = 0.5 * p[k] * (weights @ dfdz)
        if include_query:
            g[k, k] += 0.5 * p[k] * weights @ (2 * aq[k] * (ak - sq))
    return g


def hessian(S, p, counts, weights, include_query, h=1e-5):
    """Central differences of :func:`grad` (K*K, K*K), symmetrised; error O(h^2) + O(eps/h) ~ 1e-10."""
    K = S.shape[0]
    Hm = np.zeros((K * K, K * K))
    for i in range(K * K):
        e = np.zeros(K * K)
        e[i] = h
        e = e.reshape(K, K)
        Hm[:, i] = ((grad(S + e, p, counts, weights, include_query)
                     - grad(S - e, p, counts, weights, include_query)) / (2 * h)).ravel()
    return 0.5 * (Hm + Hm.T)


def gd(p, N, lr, steps, include_query=False):
    """GD from scores = 0 on the exact population loss. Returns per-step (steps+1,) loss, (steps+1, K)
    feature_loss, (steps+1, K, K) scores."""
    counts, weights = exact_table(N, p)
    K = len(p)
    s = np.zeros((K, K))
    L, FL, S = [], [], []
    for t in range(steps + 1):
        fl = feature_loss(s, counts, weights, include_query)
        L.append(float(np.asarray(p) @ fl))
        FL.append(fl)
        S.append(s.copy())
        if t < steps:
            s = s - lr * grad(s, np.asarray(p), counts, weights, include_query)
    return np.array(L), np.array(FL), np.array(S)


def one_line(err: pytest.ExceptionInfo[BaseException], *names: str) -> str:
    """The message of ``err``, checked to be one short line that names each of ``names``."""
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 300, f"not one short line: {msg[:400]!r}"
    for name in names:
        assert name in msg, f"{name!r} missing from {msg!r}"
    return msg
