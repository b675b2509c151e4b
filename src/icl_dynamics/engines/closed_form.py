"""The expectation over prompt token counts in closed form (spec section 9), at a cost independent of N.

For one query row with weights E_m = e^{s_m - max} and Z = sum_m n_m E_m + c (c = E_k with the query's
column in the softmax), the loss numerator is u^T H u with u = Z (a - e_k): u_m = n_m E_m (m != k),
u_k = -(Z - n_k E_k). Every term is a product of counts over a power of Z, and the Laplace identity
1/Z^r = int t^{r-1} e^{-tZ} dt / (r-1)! with E[e^{-t sum n E}] = P(phi(t)), phi = sum_j p_j e^{-t E_j},
turns each into a 1-D integral of P, P', P'' (P the prompt length's generating function, P(z) = z^N for
fixed N). The integrals run on a uniform grid in x = log t. The gradient is autodiff through that grid
(the grid itself is held fixed), which yields the same integrals with one more power of t.

Why the grid is exact: for every count vector the integrand is t^r e^{-tZ} dx, so the error is, per count
vector and hence relative to every entry (all terms are positive): below the grid (t_lo Z)^r <= LOW,
above it the tail Gamma(r+1, HIGH)/r! <= e^{-50} 50^2, and the trapezoid's aliasing, which is
~ |Gamma(r + 2 pi i / h)| / Gamma(r) ~ e^{-pi^2 / h} (h = grid step). Measured against enumeration (K <= 5,
spreads 10-300): round-off (<= 2e-14) up to h = 0.25, then 1e-12 at 0.3, 5e-10 at 0.35, 3e-8 at 0.4 (the
gradient is the worst). The span log(HIGH / LOW) + log(Z_max / Z_min) is <= 43 + spread
(+ log(n_max / n_min) for a random length), so the node count for a fixed N does not depend on N.

Exact symmetry (features of equal probability stay bit-for-bit equal under GD): with ``groups`` each class
of equal p is computed once, from a row in canonical order (own feature, the rest of its class, every class),
and the results are scattered back by a fixed gather, so equal entries come from one array element.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .closed_form_law import PromptLaw, fixed, poisson, uniform

__all__ = ["PromptLaw", "fixed", "poisson", "uniform", "Stats", "Classes", "classes", "stats_kernel",
           "expected_stats", "choose_nodes", "spread_limit", "max_step", "max_step_kernel",
           "quadrature_error"]

LOW = 1e-17  # t_lo * Z_max; spec section 9's e^{-14} leaves the 1/Z terms (attention) at ~5e-7
HIGH = 50.0  # t_hi * Z_min
STEP = 0.2  # largest grid step in log t chosen; 0.25 is still round-off, so growth has a margin
BASE_SPAN = math.log(HIGH / LOW)
MIN_NODES = 256
BUCKET = 256
ROW_BATCH = 4  # rows per vectorised batch: (batch, nodes, K) temporaries stay in cache


class Stats(NamedTuple):
    """grad (K, K) = dL/dscores (carries p_k), feature_loss (K,), attention (K, K)."""

    grad: jnp.ndarray
    feature_loss: jnp.ndarray
    attention: jnp.ndarray


class Classes(NamedTuple):
    """Features of exactly equal probability. class_of (K,): class index per feature, classes numbered by
    first appearance; members: the features of each class, ascending. Hashable, so it can be static."""

    class_of: tuple[int, ...]
    members: tuple[tuple[int, ...], ...]


def classes(probs) -> Classes:
    """Group features whose float64 probabilities are exactly equal. probs (K,)."""
    p = np.asarray(probs, dtype=np.float64)
    first: dict[float, int] = {}
    class_of = tuple(first.setdefault(float(v), len(first)) for v in p)
    members = tuple(tuple(j for j in range(len(p)) if class_of[j] == c) for c in range(len(first)))
    return Classes(class_of, members)


def _row_frame(s, p, m, own, law: PromptLaw, include_query: bool):
    """Weights E (G,), the query column's c, and the grid's ends (x_lo, x_hi) for one row of groups."""
    present = (p > 0) & (m > 0)
    keep = present | (own > 0) if include_query else present
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(keep, s, -jnp.inf)))
    E = jnp.exp(jnp.where(keep, s - shift, 0.0))  # absent features (p = 0) never count: any finite E
    c = jnp.sum(own * E) if include_query else jnp.zeros((), s.dtype)
    e_min = jnp.min(jnp.where(present, E, 1.0))
    # without the query's column an empty prompt (Z = 0) is handled apart, so it does not set Z_min
    n_min = law.n_min() if include_query else jnp.maximum(law.n_min(), 1.0)
    z_max, z_min = law.n_max() + c, n_min * e_min + c
    ends = jnp.log(LOW / z_max), jnp.log(HIGH / z_min)
    return E, c, jax.lax.stop_gradient(ends)


def _row(s, p, m, own, law: PromptLaw, H, sigma2, include_query: bool, nodes: int):
    """One query row given as G groups: scores s, per-member probability p, multiplicity m (G,), own (G,)
    one-hot for the query's own feature (multiplicity 1). H: None (identity), a scalar h (h I) or a (G, G)
    matrix (singleton groups only). Returns (feature_loss (), attention per member (G,))."""
    E, c, (x_lo, x_hi) = _row_frame(s, p, m, own, law, include_query)
    h = (x_hi - x_lo) / (nodes - 1)
    t = jnp.exp(x_lo + h * jnp.arange(nodes, dtype=s.dtype))  # (n,)
    tE = t[:, None] * E
    d = jnp.sum(m * p * jnp.expm1(-tE), axis=-1)  # phi - 1 without cancellation near t = 0
    q = p * jnp.exp(-tE)  # (n, G): p_j e^{-t E_j}
    phi = q @ m
    near = d > -0.5  # log1p(d) is exact near phi = 1, log(phi) where phi << 1 (1 + d would be 0 there)
    logphi = jnp.where(near, jnp.log1p(jnp.where(near, d, -0.5)), jnp.log(jnp.where(near, 1.0, phi)))
    P0, P1, P2 = law.pgf(logphi, d)
    other = m * (1.0 - own)
    y = q * E  # E[n_j E_j e^{-t sum n E}] = P' y_j
    yE = y * E
    r1 = y @ other  # E[R e^{-t sum n E}] = P' r1, R = sum_{m != k} n_m E_m
    if H is None or jnp.ndim(H) == 0:
        hs = 1.0 if H is None else H
        hkk = hs  # E[|u|^2 e^{-tY}], |u|^2 = sum_{m != k} n_m^2 E_m^2 + (R + c)^2, by factorial moments
        quad = hs * (P2 * ((y * y) @ other + r1 * r1) + P1 * (2.0 * (yE @ other) + 2.0 * c * r1) + c * c * P0)
    else:  # u^T H u = v^T H v terms with v = y on m != k and -r1 on k
        v = y * (1.0 - own) - r1[:, None] * own
        Hv = v @ H
        Hk = own @ H
        hkk = Hk @ own
        dH = jnp.diagonal(H) - 2.0 * Hk + hkk  # (e_m - e_k)^T H (e_m - e_k)
        quad = (P2 * jnp.sum(v * Hv, axis=-1) + P1 * (yE @ (other * dH) - 2.0 * c * (Hv @ own))
                + c * c * hkk * P0)
    noise = P1 * (yE @ m)  # E[sum_m n_m E_m^2 e^{-tZ}]
    w = h * t * (jnp.exp(-t * c) if include_query else 1.0)  # dt = t dx
    total = (w * t) @ (quad + sigma2 * noise)  # 1/Z^2 = int t e^{-tZ} dt
    if not include_query:  # Z = 0 (an empty prompt): a = 0, so (a - e_k)^T H (a - e_k) = H_kk
        total = total + hkk * law.zero_mass()
    return 0.5 * total, w @ (P1[:, None] * y)  # E[n_j E_j / Z] = int P' y_j dt


def _layout(groups: Classes):
    """Host tables for the grouped rows: cols (C, G) the score column read for each group, mult (C, G),
    gidx (K, K) the group of entry (k, j) in row class_of[k]. Group 0 is the own feature, 1 + c the class c
    (less the own feature)."""
    cls, mem = np.asarray(groups.class_of), groups.members
    C = len(mem)
    cols, mult = np.zeros((C, C + 1), np.int64), np.zeros((C, C + 1))
    for a, ma in enumerate(mem):
        cols[a, 0], mult[a, 0] = ma[0], 1.0
        for b, mb in enumerate(mem):
            rest = [j for j in mb if j != ma[0]]
            cols[a, 1 + b], mult[a, 1 + b] = (rest[0] if rest else ma[0]), len(rest)
    gidx = np.where(np.eye(len(cls), dtype=bool), 0, 1 + cls[None, :])
    return np.array([ma[0] for ma in mem]), cols, mult, gidx


def stats_kernel(scores, probs, law: PromptLaw, H=None, sigma2=0.0, *, include_query: bool, nodes: int,
                 groups: Classes | None = None) -> Stats:
    """Jittable core (static: include_query, nodes, groups, law.kind): expects float64 inputs and enters no
    x64 context, for use inside a float64 jitted step. scores (K, K), probs (K,) summing to 1, H None /
    scalar / (K, K) PSD, sigma2 () >= 0. ``groups`` (from :func:`classes`) assumes scores constant on class
    blocks and H None or scalar; with an H matrix it is ignored (singleton rows)."""
    K = scores.shape[0]
    if groups is not None and (H is None or jnp.ndim(H) == 0):
        reps, cols, mult, gidx = _layout(groups)
        s, p = scores[reps[:, None], cols], probs[cols]
        m = jnp.asarray(mult, scores.dtype)
        own = jnp.zeros_like(m).at[:, 0].set(1.0)
    else:
        reps, gidx = np.arange(K), None
        s, p = scores, jnp.broadcast_to(probs, (K, K))
        m, own = jnp.ones_like(scores), jnp.eye(K, dtype=scores.dtype)
        mult = np.ones((K, K))

    def one(si, pi, mi, oi):
        fl_att = jax.value_and_grad(lambda x: _row(x, pi, mi, oi, law, H, sigma2, include_query, nodes),
                                    has_aux=True)
        (fl, att), dfl = fl_att(si)
        return fl, att, dfl

    R = s.shape[0]
    if R <= ROW_BATCH:
        fl, att, dfl = jax.vmap(one)(s, p, m, own)
    else:  # a divisor, so the map compiles one body and no remainder
        b = max(d for d in range(1, ROW_BATCH + 1) if R % d == 0)
        fl, att, dfl = jax.lax.map(lambda a: one(*a), (s, p, m, own), batch_size=b)
    # d/ds_g sums over the group's members, which are exchangeable: per entry divide by the multiplicity
    g = probs[reps][:, None] * dfl / jnp.asarray(np.where(mult > 0, mult, 1.0), scores.dtype)
    if gidx is None:
        return Stats(g, fl, att)
    row = np.asarray(groups.class_of)
    return Stats(g[row[:, None], gidx], fl[row], att[row[:, None], gidx])


_kernel = jax.jit(stats_kernel, static_argnames=("include_query", "nodes", "groups"))


def _f64(x):
    return None if x is None else jnp.asarray(x, jnp.float64)


def expected_stats(scores, probs, law: PromptLaw, include_query: bool = False, nodes: int | None = None,
                   H=None, sigma2=0.0, groups: Classes | None = None) -> Stats:
    """Public float64 wrapper of :func:`stats_kernel` (jitted). scores (K, K), probs (K,). nodes=None picks
    the count from the concrete scores (:func:`choose_nodes`). With concrete inputs and ``groups``, checks
    that scores are constant on the class blocks."""
    with jax.enable_x64(True):
        scores, probs, H, sigma2 = _f64(scores), _f64(probs), _f64(H), _f64(sigma2)
        law = law.as_f64()
        if not isinstance(probs, jax.core.Tracer):
            pr = np.asarray(probs)
            if np.any(pr < 0) or abs(pr.sum() - 1.0) > 1e-12:
                raise ValueError(f"probs must be >= 0 and sum to 1, got sum {pr.sum()!r}")
        if nodes is None:
            nodes = choose_nodes(scores, probs, law, include_query)
        if groups is not None and (H is None or H.ndim == 0) and not isinstance(scores, jax.core.Tracer):
            _check_blocks(np.asarray(scores), groups)
        return _kernel(scores, probs, law, H, sigma2, include_query=include_query, nodes=nodes, groups=groups)


def _check_blocks(scores: np.ndarray, groups: Classes):
    reps, cols, mult, gidx = _layout(groups)
    row = np.asarray(groups.class_of)
    want = scores[reps[:, None], cols][row[:, None], gidx]
    if not np.array_equal(want, scores):
        raise ValueError("groups given, but scores are not constant on the blocks of the equal-p classes")


def _spans(scores, probs, law: PromptLaw, include_query: bool):
    """Per row x_hi - x_lo (K,) for singleton rows (grouped rows have the same values)."""
    K = scores.shape[0]
    frame = jax.vmap(lambda s, o: _row_frame(s, probs, jnp.ones(K, s.dtype), o, law, include_query)[2])
    lo, hi = frame(scores, jnp.eye(K, dtype=scores.dtype))
    return hi - lo


_spans_jit = jax.jit(_spans, static_argnames="include_query")
_law_range = jax.jit(lambda law: (law.n_min(), law.n_max()))


def max_step_kernel(scores, probs, law: PromptLaw, *, include_query: bool, nodes: int):
    """Jittable, float64 inputs, no x64 context: the largest grid step in log t over rows (), scores (K, K).
    Results are exact to round-off while it is <= 0.25 (STEP = 0.2 leaves a margin); beyond, errors grow
    like e^{-pi^2 / step}: measured 1e-12 at 0.3, 5e-10 at 0.35 (module docstring)."""
    return jnp.max(_spans(scores, probs, law, include_query)) / (nodes - 1)


_max_step = jax.jit(max_step_kernel, static_argnames=("include_query", "nodes"))


def max_step(scores, probs, law: PromptLaw, include_query: bool, nodes: int) -> float:
    """Host wrapper of :func:`max_step_kernel` in float64."""
    with jax.enable_x64(True):
        return float(_max_step(_f64(scores), _f64(probs), law.as_f64(), include_query=include_query,
                               nodes=nodes))


def choose_nodes(scores, probs, law: PromptLaw, include_query: bool = False, margin: float = 0.0) -> int:
    """Host: the node count (a multiple of BUCKET, >= MIN_NODES) that keeps the grid step <= STEP for these
    concrete scores (K, K), with room for ``margin`` more spread. For a fixed N it does not depend on N."""
    with jax.enable_x64(True):
        spans = _spans_jit(_f64(scores), _f64(probs), law.as_f64(), include_query=include_query)
        span = float(jnp.max(spans)) + margin
    need = math.ceil(span / STEP) + 1
    return max(MIN_NODES, BUCKET * math.ceil(need / BUCKET))  # few distinct counts: few compilations


def spread_limit(nodes: int, law: PromptLaw, include_query: bool = False) -> float:
    """Host: the largest row spread (max - min score over features with p > 0, and the query's own with
    include_query) that ``nodes`` covers at step <= STEP. Z_max / Z_min <= e^{spread} n_max / n_min, or
    e^{spread} (n_max + 1) when an empty prompt leaves Z = c."""
    with jax.enable_x64(True):
        n_min, n_max = (float(v) for v in _law_range(law.as_f64()))
    ratio = math.log(n_max + 1.0) if include_query and n_min == 0 else math.log(n_max / max(n_min, 1.0))
    return (nodes - 1) * STEP - BASE_SPAN - ratio


def quadrature_error(scores, probs, law: PromptLaw, include_query: bool = False, nodes: int | None = None,
                     H=None, sigma2=0.0) -> float:
    """Host: max relative difference of feature_loss and attention between ``nodes`` and nodes // 2 on the
    same span. Doubling the step squares the aliasing error, so this bounds the error at nodes // 2; the
    error at ``nodes`` is about its square."""
    if nodes is None:
        nodes = choose_nodes(scores, probs, law, include_query)
    a = expected_stats(scores, probs, law, include_query, nodes, H, sigma2)
    b = expected_stats(scores, probs, law, include_query, nodes // 2, H, sigma2)
    rel = [np.max(np.abs(np.asarray(x) - np.asarray(y)) / np.maximum(np.abs(np.asarray(x)), 1e-300))
           for x, y in ((a.feature_loss, b.feature_loss), (a.attention, b.attention))]
    return float(max(rel))
