"""The transformer engine's model as a researcher would write it in PyTorch: the full-parameter one-layer
model F(E) = E + W^{PV} E softmax(E^T W^{KQ} E) with W^{KQ} and W^{PV} both trained ((d+1) x (d+1)
``nn.Parameter`` each), an eager autograd loop, one plain SGD step per batch, float64 (our engine is
float64; a float32 peer would be faster but not comparable).

Two peers, both computing our transformer engine's loss 1/2 mean (yhat - <w, x_q>)^2 and its gradient
(``train.engine=transformer``, ``model.params=full``, one head, softmax over the N prompt tokens):

- ``query column`` (``literal=False``): only the query column of the attention, the one column the
  prediction yhat = F[d, N] depends on: logits e_i^T W^{KQ} e_q over the N prompt tokens, a softmax, and
  yhat = sum_i a_i (W^{PV} e_i)[d]. This is what our engine computes too (``model.query_column``): O(B N d).
- ``literal`` (``literal=True``): the full (N+1) x (N+1) attention matrix E^T W^{KQ} E, its column-wise
  softmax, every column of F(E), then yhat = F[d, N]: O(B N^2 d).

A batch is (X, y, w) as our engine's ``data.TokenBatch``: X (B, N+1, d) the tokens (query last), y (B, N)
the prompt labels <w, x_i>, w (B, d) the tasks. Importing this module needs torch; the
``transformer_vs_torch`` section (transformer_peer.py) is skipped without it.
"""

from __future__ import annotations

import time

import numpy as np
import torch


class Peer:
    """One SGD run from the given W^{KQ}, W^{PV}: ``step()`` samples a batch (features ~ p, w ~ N(0, I)),
    computes the loss, backprops and steps the optimizer; ``compute_step(X, y, w)`` does the same on a
    given batch (no sampling)."""

    def __init__(self, probs: np.ndarray, V: np.ndarray, N: int, batch: int, lr: float, w_kq: np.ndarray,
                 w_pv: np.ndarray, literal: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.probs = torch.tensor(np.array(probs), dtype=torch.float64)
        self.VT = torch.tensor(np.array(V).T, dtype=torch.float64)  # (K, d): row k is the feature v_k
        self.N, self.batch, self.literal = N, batch, literal
        self.d = self.VT.shape[1]
        self.W_KQ = torch.nn.Parameter(torch.tensor(np.array(w_kq), dtype=torch.float64))
        self.W_PV = torch.nn.Parameter(torch.tensor(np.array(w_pv), dtype=torch.float64))
        self.opt = torch.optim.SGD([self.W_KQ, self.W_PV], lr=lr)

    def sample(self):
        B, N = self.batch, self.N
        feat = torch.multinomial(self.probs, B * (N + 1), replacement=True).view(B, N + 1)
        X = self.VT[feat]  # (B, N+1, d)
        w = torch.randn(B, self.d, dtype=torch.float64)
        y = torch.einsum("bnd,bd->bn", X[:, :-1], w)
        return X, y, w

    def loss(self, X, y, w):
        B = X.shape[0]
        T = torch.cat([X, torch.cat([y, torch.zeros(B, 1, dtype=y.dtype)], 1)[..., None]], 2)  # (B, N+1, d+1)
        yhat = self._literal_yhat(T) if self.literal else self._query_column_yhat(T)
        return 0.5 * ((yhat - torch.einsum("bd,bd->b", X[:, -1], w)) ** 2).mean()

    def _query_column_yhat(self, T):
        keys = T[:, :-1]  # the N prompt tokens e_i = (x_i, y_i)
        logits = keys @ (T[:, -1] @ self.W_KQ.T)[..., None]  # (B, N, 1): e_i^T W^{KQ} e_q
        a = torch.softmax(logits[..., 0], dim=-1)
        v = keys @ self.W_PV[-1]  # (B, N): row d of W^{PV} e_i
        return (a * v).sum(-1)

    def _literal_yhat(self, T):
        E = T.transpose(1, 2)  # (B, d+1, N+1), columns e_1 .. e_N, e_q
        n1 = E.shape[-1]
        logits = E.transpose(1, 2) @ self.W_KQ @ E  # [i, j] = e_i^T W^{KQ} e_j: key i, query j
        mask = torch.zeros(n1, 1, dtype=torch.bool)
        mask[-1] = True  # the query's column is not a key (softmax over the N prompt tokens)
        attn = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=1)
        F = E + self.W_PV @ E @ attn  # every column of F(E)
        return F[:, -1, -1]  # yhat = F[d, N]

    def compute_step(self, X, y, w):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(X, y, w)
        loss.backward()
        self.opt.step()
        return loss

    def step(self):
        return self.compute_step(*self.sample())


def time_steps(peer: Peer, steps: int, batch=None) -> float:
    """Seconds per step, the median over ``steps`` timed steps after one warm-up step. With ``batch`` every
    step runs on that batch (compute only: forward, backward, update); without, each samples its own."""
    peer.compute_step(*(batch if batch is not None else peer.sample()))
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        peer.compute_step(*batch) if batch is not None else peer.step()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
