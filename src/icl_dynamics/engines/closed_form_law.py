"""The prompt length's law for :mod:`closed_form`: its generating function P(z) = E[z^N] and derivatives.

Spec section 9: a random prompt length replaces phi^N, N phi^{N-1}, N (N-1) phi^{N-2} by P(phi), P'(phi),
P''(phi). Powers are taken as exp(r log phi) with log phi supplied by the caller (accurate both near
phi = 1 and for phi << 1), so N = 10^6 costs the same as N = 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("fixed", "poisson", "uniform")


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class PromptLaw:
    """kind: 'fixed' (value = N), 'poisson' (value = mean lam) or 'uniform' (N uniform on
    {value .. value + size - 1}). kind and size are static under jit; value is an array leaf ()."""

    kind: str
    value: Any
    size: int = 1

    def tree_flatten(self):
        return (self.value,), (self.kind, self.size)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(aux[0], leaves[0], aux[1])

    def as_f64(self) -> PromptLaw:
        return PromptLaw(self.kind, jnp.asarray(self.value, jnp.float64), self.size)

    def pgf(self, logphi, d):
        """(P, P', P'') at phi = 1 + d, each shaped like logphi; d = phi - 1 in [-1, 0] (exact near 0)."""
        v = self.value
        if self.kind == "fixed":
            return tuple(_power(_falling(v, r), v - r, logphi) for r in range(3))
        if self.kind == "poisson":
            base = jnp.exp(v * d)  # exp(lam (phi - 1)): d is exact where phi ~ 1
            return base, v * base, v * v * base
        n = v + jnp.arange(self.size, dtype=logphi.dtype)  # uniform: average of the fixed laws
        terms = [_power(_falling(n, r), n - r, logphi[..., None]) for r in range(3)]
        return tuple(jnp.mean(x, axis=-1) for x in terms)

    def zero_mass(self):
        """P(N = 0) ()."""
        v = self.value
        if self.kind == "fixed":
            return jnp.where(v == 0, 1.0, 0.0)
        if self.kind == "poisson":
            return jnp.exp(-v)
        return jnp.where(v == 0, 1.0 / self.size, 0.0)

    def n_max(self):
        """A length that the law exceeds with negligible probability (Poisson: e^{-50}-ish)."""
        v = self.value
        if self.kind == "poisson":
            return v + 10.0 * jnp.sqrt(v) + 30.0
        return jnp.maximum(v + (self.size - 1 if self.kind == "uniform" else 0), 1.0)

    def n_min(self):
        """The smallest length the law can take (0 included)."""
        return jnp.zeros_like(self.value) if self.kind == "poisson" else self.value


def _falling(n, r: int):
    out = jnp.ones_like(n)
    for i in range(r):
        out = out * (n - i)
    return out


def _power(coef, expo, logphi):
    """coef * phi^expo, and exactly 0 where coef = 0 (expo may be negative there)."""
    zero = coef == 0
    return jnp.where(zero, 0.0, coef * jnp.exp(jnp.where(zero, 0.0, expo) * logphi))


def fixed(N: int) -> PromptLaw:
    """Every prompt has N examples."""
    if N < 0:
        raise ValueError(f"prompt length must be >= 0, got {N}")
    return PromptLaw("fixed", float(N))


def poisson(lam: float) -> PromptLaw:
    """N ~ Poisson(lam): P(z) = exp(lam (z - 1))."""
    if not lam > 0:
        raise ValueError(f"Poisson mean must be > 0, got {lam}")
    return PromptLaw("poisson", float(lam))


def uniform(lo: int, hi: int) -> PromptLaw:
    """N uniform on the integers lo..hi; costs O(hi - lo + 1) per node."""
    if not 0 <= lo <= hi:
        raise ValueError(f"need 0 <= lo <= hi, got {lo}, {hi}")
    return PromptLaw("uniform", float(lo), hi - lo + 1)
