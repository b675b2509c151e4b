"""An exact population reference for the imbalanced setting, by symmetry (independent of the engines).

With p = (p_1, q, ..., q), GD from scores = 0 keeps the K - 1 minor features exchangeable, so scores has
five distinct values: theta = (A_1, B_{1,m}, A_k, B_{k,1}, B_{k,n}). A query's loss then depends on the
counts only through a binomial (dominant query: n_1, n_rest) or trinomial (minor query k: n_1, n_k,
n_other) split, plus E[sum of squared counts] of the exchangeable rest, which is closed-form:
for n ~ Multinomial(n_rest, uniform over J), E[sum_m n_m^2] = n_rest (1 - 1/J) + n_rest^2 / J.
So the expectation over all C(N+K-1, K-1) count vectors is an exact sum over O(N^2) terms.

GD on scores restricted to the symmetric subspace: every entry of pattern i moves by
-lr (dL/dtheta_i) / |P_i| (the pattern's entry count), the exact K x K step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln


def _log_multinomial(N, ns, ps):
    return gammaln(N + 1) - sum(gammaln(n + 1) for n in ns) + sum(n * np.log(p) for n, p in zip(ns, ps))


class SymmetricExact:
    """Exact per-feature loss and GD for p = (p1, q, ..., q), K >= 3, prompt length N."""

    def __init__(self, K: int, N: int, p1: float):
        if K < 3:
            raise ValueError("the symmetric reference needs K >= 3")
        self.K, self.N, self.p1 = K, N, p1
        q = (1.0 - p1) / (K - 1)
        n1 = np.arange(N + 1, dtype=np.float64)
        self.dom = (n1, np.exp(_log_multinomial(N, [n1, N - n1], [p1, 1 - p1])))
        a, b = np.meshgrid(np.arange(N + 1), np.arange(N + 1), indexing="ij")
        keep = a + b <= N  # (n_1, n_k), n_other = N - n_1 - n_k
        n1, nk = a[keep].astype(np.float64), b[keep].astype(np.float64)
        w = np.exp(_log_multinomial(N, [n1, nk, N - n1 - nk], [p1, q, 1 - p1 - q]))
        self.minor = (n1, nk, w)
        self.sizes = np.array([1, K - 1, K - 1, K - 1, (K - 1) * (K - 2)], dtype=np.float64)
        self.probs = np.array([p1, 1.0 - p1])  # query mass: dominant, all minor together

    def feature_loss(self, theta):
        """(dominant, minor) per-feature loss at theta = (A1, B1m, Ak, Bk1, Bkn)."""
        K, N = self.K, self.N
        A1, B1m, Ak, Bk1, Bkn = theta
        n1, w = self.dom
        c = jnp.maximum(A1, B1m)
        e1, er = jnp.exp(A1 - c), jnp.exp(B1m - c)
        nr = N - n1
        Z = n1 * e1 + nr * er
        a1 = n1 * e1 / Z
        sq_rest = (er / Z) ** 2 * (nr * (1 - 1 / (K - 1)) + nr**2 / (K - 1))
        f_dom = 0.5 * jnp.sum(w * ((1 - a1) ** 2 + sq_rest))

        n1, nk, w = self.minor
        no = N - n1 - nk
        c = jnp.maximum(Ak, jnp.maximum(Bk1, Bkn))
        ek, e1, eo = jnp.exp(Ak - c), jnp.exp(Bk1 - c), jnp.exp(Bkn - c)
        Z = nk * ek + n1 * e1 + no * eo
        ak, a1 = nk * ek / Z, n1 * e1 / Z
        sq_other = (eo / Z) ** 2 * (no * (1 - 1 / (K - 2)) + no**2 / (K - 2))
        f_min = 0.5 * jnp.sum(w * ((1 - ak) ** 2 + a1**2 + sq_other))
        return jnp.stack([f_dom, f_min])

    def loss(self, theta):
        return jnp.asarray(self.probs) @ self.feature_loss(theta)

    def scores(self, theta) -> np.ndarray:
        """The K x K scores matrix of theta."""
        A1, B1m, Ak, Bk1, Bkn = np.asarray(theta)
        S = np.full((self.K, self.K), Bkn)
        S[0, :], S[:, 0] = B1m, Bk1
        S[0, 0] = A1
        S[np.arange(1, self.K), np.arange(1, self.K)] = Ak
        return S

    def run(self, lr: float, steps: int, logged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GD from 0: per-feature loss (R, K) and scores (R, K, K) at the R logged steps (float64)."""
        with jax.enable_x64(True):  # a reference: never float32, whatever the caller's default
            return self._run(lr, steps, logged)

    def _run(self, lr, steps, logged):
        sizes = jnp.asarray(self.sizes)
        grad = jax.grad(self.loss)

        def step(theta, _):
            return theta - lr * grad(theta) / sizes, None

        @jax.jit
        def advance(theta, n):
            return jax.lax.fori_loop(0, n, lambda i, t: step(t, None)[0], theta)

        theta, t, out, scores = jnp.zeros(5), 0, [], []
        fl = jax.jit(self.feature_loss)
        for target in logged:
            theta = advance(theta, int(target - t))
            t = int(target)
            f = np.asarray(fl(theta))
            out.append(np.concatenate([[f[0]], np.full(self.K - 1, f[1])]))
            scores.append(self.scores(theta))
        return np.array(out), np.array(scores)
