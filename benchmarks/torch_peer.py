"""The tokens objective as a researcher would write it in PyTorch: an eager autograd loop, one SGD step per
freshly sampled batch, float64 (our engine is float64; a float32 peer would be faster but not comparable).

Two peers, both computing the same loss and gradient as our tokens engine (spec sections 2-4):

- ``restricted``: only the query column of the attention, the one entry yhat depends on (what our engine
  computes too, before it groups tokens by feature);
- ``literal``: the full (N+1) x (N+1) attention F(E) = E + W^{PV} E softmax(E^T W^{KQ} E), as written in
  the paper, then yhat = F[d, N].

Importing this module needs torch; the ``tokens_vs_torch`` section (peer_bench.py) is skipped without it.
"""

from __future__ import annotations

import time

import numpy as np
import torch


class Peer:
    """One SGD run: ``step()`` samples a batch (features ~ p, w ~ N(0, I)), computes the loss, backprops and
    steps the optimizer. ``compute_step(batch)`` does the same on a given batch (no sampling)."""

    def __init__(self, probs: np.ndarray, N: int, d: int, batch: int, lr: float, literal: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.probs = torch.tensor(np.array(probs), dtype=torch.float64)
        self.N, self.d, self.batch, self.literal = N, d, batch, literal
        K = len(probs)
        self.V = torch.eye(d, K, dtype=torch.float64)  # features v_k = e_k (d == K in the benchmark)
        self.Q = torch.nn.Parameter(torch.zeros(d, d, dtype=torch.float64))
        self.opt = torch.optim.SGD([self.Q], lr=lr)

    def sample(self):
        B, N = self.batch, self.N
        feat = torch.multinomial(self.probs, B * (N + 1), replacement=True).view(B, N + 1)
        x = self.V[:, feat].permute(1, 0, 2)  # (B, d, N+1)
        w = torch.randn(B, self.d, dtype=torch.float64)
        return x, w

    def loss(self, x, w):
        y = torch.einsum("bdi,bd->bi", x, w)  # labels y_i = <w, x_i>; y[:, -1] is the query's target
        if self.literal:
            yhat = self._literal_yhat(x, y)
        else:
            logits = torch.einsum("bdi,de,be->bi", x[..., :-1], self.Q, x[..., -1])  # x_i^T Q x_q
            a = torch.softmax(logits, dim=-1)
            yhat = (y[:, :-1] * a).sum(-1)
        return 0.5 * ((yhat - y[:, -1]) ** 2).mean()

    def _literal_yhat(self, x, y):
        B, d, n1 = x.shape
        E = torch.cat([x, torch.cat([y[:, :-1], torch.zeros(B, 1, dtype=y.dtype)], 1)[:, None, :]], 1)
        w_kq = torch.zeros(d + 1, d + 1, dtype=x.dtype)
        w_kq[:d, :d] = self.Q
        w_pv = torch.zeros(d + 1, d + 1, dtype=x.dtype)
        w_pv[d, d] = 1.0
        logits = E.transpose(1, 2) @ w_kq @ E  # [i, j]: key i, query j
        mask = torch.zeros(n1, 1, dtype=torch.bool)
        mask[-1] = True  # the query column is not a key (softmax over the N prompt tokens)
        attn = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=1)
        F = E + w_pv @ E @ attn
        return F[:, d, -1]

    def compute_step(self, x, w):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(x, w)
        loss.backward()
        self.opt.step()
        return loss

    def step(self):
        return self.compute_step(*self.sample())


def time_steps(peer: Peer, steps: int, presampled: bool = False) -> float:
    """Seconds per step, the median over ``steps`` timed steps after one warm-up step."""
    batch = peer.sample()
    peer.compute_step(*batch)
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        peer.compute_step(*batch) if presampled else peer.step()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
