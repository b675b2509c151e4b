"""The model (spec section 3): F(E) = E + W^{PV} E softmax(E^T W^{KQ} E), with only Q trained.

Two views of one computation:

- :func:`literal_forward` builds the block matrices W^{PV}, W^{KQ} and the full (N+1) x (N+1) attention,
  exactly as written in the paper. Tests use it as ground truth.
- :func:`predict` computes only the query column, the one entry yhat = F[d, N] depends on. The tokens engine
  differentiates this; tests check it equals the literal pass in value and gradient.

The general model of the transformer engine (several heads, every entry of W^{KQ} and W^{PV} trainable):
:func:`head_matrices` builds the blocks, :func:`literal_forward_heads` is its every-column forward pass and
:func:`query_column` its prediction, the one the engine differentiates.

Attention variants are registered functions ``attend(logits, mult, query_logit, include_query) -> mass``:
``logits`` (..., J) are key scores, ``mult`` (..., J) how many tokens share each score (1 for tokens,
counts n_m for the population view), ``query_logit`` (...,) the query's score with itself. They return the
total attention mass on each of the J entries, shape (..., J). Built in: ``softmax`` (the paper), ``linear``
and ``relu`` (the scores as they are, or max(score, 0), normalised by the number of keys sum(mult), plus one
with the query's column). A new variant is one function plus ``@ATTENTION.register(name)`` (registry.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .registry import ATTENTION

Attend = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, bool], jnp.ndarray]


def log_mass_logits(logits: jnp.ndarray, mult: jnp.ndarray) -> jnp.ndarray:
    """log(mult) + logits, with -inf where mult == 0 (no token there). Safe under autodiff."""
    present = mult > 0
    return jnp.where(present, jnp.log(jnp.where(present, mult, 1.0)) + logits, -jnp.inf)


@ATTENTION.register("softmax")
def softmax_attention(logits, mult, query_logit, include_query: bool):
    """a_j = mult_j e^{l_j} / (sum_i mult_i e^{l_i} [+ e^{l_q}]), via a max-shifted softmax: finite for
    scores of any size."""
    z = log_mass_logits(logits, mult)
    if include_query:
        z = jnp.concatenate([z, query_logit[..., None]], axis=-1)
    a = jax.nn.softmax(z, axis=-1)
    return a[..., : logits.shape[-1]]


def _n_keys(mult, include_query: bool):
    """The number of keys: sum of multiplicities, plus the query's column with ``include_query`` (>= 1)."""
    n = jnp.sum(mult, axis=-1, keepdims=True) + (1.0 if include_query else 0.0)
    return jnp.maximum(n, 1.0)


@ATTENTION.register("linear")
def linear_attention(logits, mult, query_logit, include_query: bool):
    """a_j = mult_j l_j / n_keys: the scores as they are, normalised by the number of keys (N, or N + 1 with
    the query's column), as in the linear-attention literature (Zhang, Frei & Bartlett 2023; von Oswald et al.
    2023). Masses can be negative and need not sum to 1."""
    return mult * logits / _n_keys(mult, include_query)


@ATTENTION.register("relu")
def relu_attention(logits, mult, query_logit, include_query: bool):
    """a_j = mult_j max(l_j, 0) / n_keys. At l_j = 0 its derivative is taken as 1/2 (jnp.maximum's), so a
    zero initialisation still trains (all scores start at 0)."""
    return mult * jnp.maximum(logits, 0.0) / _n_keys(mult, include_query)


def block_matrices(Q: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """W^{KQ} = [[Q, 0], [0, 0]] and W^{PV} = [[0, 0], [0, 1]], both (d+1, d+1)."""
    d = Q.shape[0]
    w_kq = jnp.zeros((d + 1, d + 1), Q.dtype).at[:d, :d].set(Q)
    w_pv = jnp.zeros((d + 1, d + 1), Q.dtype).at[d, d].set(1.0)
    return w_kq, w_pv


def embed(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """E = [[x_1 .. x_N x_q], [y_1 .. y_N 0]]: x (B, d, N+1), y (B, N+1) -> E (B, d+1, N+1)."""
    y = y.at[..., -1].set(0.0)
    return jnp.concatenate([x, y[..., None, :]], axis=-2)


def literal_forward(E: jnp.ndarray, Q: jnp.ndarray, include_query: bool = False) -> jnp.ndarray:
    """F(E) (B, d+1, N+1) with a column-wise softmax over keys (rows of E^T W^{KQ} E).

    The softmax runs over the N prompt tokens, or over all N+1 columns when ``include_query``.
    """
    w_kq, w_pv = block_matrices(Q)
    logits = jnp.einsum("bki,kl,blj->bij", E, w_kq, E)  # [i, j] = e_i^T W^{KQ} e_j: key i, query j
    n_keys = E.shape[-1] if include_query else E.shape[-1] - 1
    mask = (jnp.arange(E.shape[-1]) < n_keys)[None, :, None]
    attn = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-2)
    return E + jnp.einsum("kl,bli,bij->bkj", w_pv, E, attn)


def query_attention(x: jnp.ndarray, Q: jnp.ndarray, include_query: bool, attention: str = "softmax"):
    """Attention of the query on each prompt token: x (B, d, N+1) -> a (B, N)."""
    xq = x[..., -1]
    logits = jnp.einsum("bdi,de,be->bi", x[..., :-1], Q, xq)  # x_i^T Q x_q
    q_logit = jnp.einsum("bd,de,be->b", xq, Q, xq)
    return ATTENTION[attention](logits, jnp.ones_like(logits), q_logit, include_query)


def predict(E: jnp.ndarray, Q: jnp.ndarray, include_query: bool = False, attention: str = "softmax"):
    """yhat = F[d, N] = sum_i y_i a_i for each prompt: E (B, d+1, N+1) -> (B,)."""
    d = Q.shape[0]
    a = query_attention(E[:, :d, :], Q, include_query, attention)
    return jnp.einsum("bi,bi->b", E[:, d, :-1], a)


# --- the general model: multi-head, every entry of W^{KQ} and W^{PV} (the transformer engine) ---------------


def paper_value(d: int, heads: int = 1, dtype=jnp.float64) -> jnp.ndarray:
    """Each head's fixed W^{PV} under params=q_only: the paper's [[0, 0], [0, 1]] divided by ``heads``, so the
    heads' sum is the paper's (heads = 1 is the paper). (heads, d+1, d+1)."""
    return jnp.zeros((heads, d + 1, d + 1), dtype).at[:, d, d].set(1.0 / heads)


def head_matrices(params: dict, d: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(W^{KQ}, W^{PV}), each (heads, d+1, d+1), from the transformer engine's parameters: {"Q": (heads, d, d)}
    (params=q_only: W^{KQ} = [[Q, 0], [0, 0]], W^{PV} = :func:`paper_value`) or {"W_KQ", "W_PV"} (full)."""
    if "Q" in params:
        Q = params["Q"]
        w_kq = jnp.zeros((Q.shape[0], d + 1, d + 1), Q.dtype).at[:, :d, :d].set(Q)
        return w_kq, paper_value(d, Q.shape[0], Q.dtype)
    return params["W_KQ"], params["W_PV"]


def literal_forward_heads(E: jnp.ndarray, w_kq: jnp.ndarray, w_pv: jnp.ndarray, include_query: bool = False,
                          attention: str = "softmax") -> jnp.ndarray:
    """F(E) = E + sum_h W^{PV}_h E_keys attend(E_keys^T W^{KQ}_h E) (B, d+1, N+1), every column: E (B, d+1, N+1),
    w_kq, w_pv (heads, d+1, d+1). Each column's attention runs over the N prompt columns (keys), or all N+1
    with ``include_query``. The reference for :func:`query_column`."""
    n_keys = E.shape[-1] if include_query else E.shape[-1] - 1
    keys = E[..., :n_keys]
    logits = jnp.einsum("bki,hkl,blj->bhji", keys, w_kq, E)  # [b, h, query column j, key i]
    a = ATTENTION[attention](logits, jnp.ones_like(logits), jnp.zeros(logits.shape[:-1], logits.dtype), False)
    return E + jnp.einsum("hkl,bli,bhji->bkj", w_pv, keys, a)


def query_column(X: jnp.ndarray, y: jnp.ndarray, w_kq: jnp.ndarray, w_pv: jnp.ndarray, include_query: bool = False,
                 attention: str = "softmax") -> tuple[jnp.ndarray, jnp.ndarray]:
    """The prediction yhat = F[d, N] and the query column's attention, without the other N columns of F (a
    one-layer model's prediction does not depend on them): X (B, N+1, d) the tokens with the query last, y (B, N)
    the prompt labels (the query's label is 0), so e_i = (x_i, y_i). Returns yhat (B,) and a (B, heads, J),
    J = N keys (N+1 with ``include_query``, the query's own column last). Same arithmetic as
    :func:`literal_forward_heads`'s last column; the query's column is one more key, so any registered
    attention sees N+1 keys.

    Every per-token quantity, the logit e_i^T W^{KQ}_h e_q and the value (W^{PV}_h e_i)[d], is one entry of
    the contraction Z = X M^T (+ the labels' terms) with M (B, 2 heads, d) stacking W^{KQ}_h e_q and row d of
    W^{PV}_h: the forward pass reads the tokens once, and its gradient (dZ^T X) once more, the fewest reads an
    O(B N d) step can make. Without ``include_query`` the query's row is scored too and given no weight
    (multiplicity 0), which costs less than copying out the N key rows."""
    d, H, N = X.shape[-1], w_kq.shape[0], y.shape[-1]
    k = jnp.einsum("hlm,bm->bhl", w_kq[:, :, :d], X[:, -1])  # W^{KQ}_h e_q, e_q = (x_q, 0): (B, H, d+1)
    M = jnp.concatenate([k, jnp.broadcast_to(w_pv[:, d, :], k.shape)], axis=1)  # (B, 2H, d+1)
    labels = jnp.concatenate([y, jnp.zeros((*y.shape[:-1], 1), y.dtype)], axis=-1)  # (B, N+1)
    Z = jnp.einsum("bnd,bcd->bnc", X, M[..., :d]) + labels[..., None] * M[:, None, :, d]  # (B, N+1, 2H)
    Z = jnp.swapaxes(Z, 1, 2)
    logits, values = Z[:, :H], Z[:, H:]
    mult = jnp.broadcast_to((jnp.arange(N + 1) < N + include_query).astype(X.dtype), logits.shape)
    a = ATTENTION[attention](logits, mult, jnp.zeros(logits.shape[:-1], logits.dtype), False)
    return jnp.sum(a * values, axis=(-2, -1)), a[..., : N + include_query]
