"""The model (spec section 3): F(E) = E + W^{PV} E softmax(E^T W^{KQ} E), with only Q trained.

Two views of one computation:

- :func:`literal_forward` builds the block matrices W^{PV}, W^{KQ} and the full (N+1) x (N+1) attention,
  exactly as written in the paper. Tests use it as ground truth.
- :func:`predict` computes only the query column, the one entry yhat = F[d, N] depends on. The tokens engine
  differentiates this; tests check it equals the literal pass in value and gradient.

Attention variants are registered functions ``attend(logits, mult, query_logit, include_query) -> mass``:
``logits`` (..., J) are key scores, ``mult`` (..., J) how many tokens share each score (1 for tokens,
counts n_m for the population view), ``query_logit`` (...,) the query's score with itself. They return the
total attention mass on each of the J entries, shape (..., J). A new variant is one function plus
``@ATTENTION.register(name)`` (registry.py).
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
