"""Tokens engine against the PyTorch peers (torch_peer.py): same batch, N, d, float64, one SGD step each.

Rows: the full step (each samples its own batch: ours with the package's sampler, the peer with
torch.multinomial), the compute alone on a fixed batch (forward, backward, update), and the literal
full-matrix peer. The share of sampling in our step is reported too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from common import engine, timed

from icl_dynamics.data import sample_prompts
from icl_dynamics.engines import tokens as T


def run(plan) -> dict:
    try:
        import torch
        import torch_peer
    except ImportError:
        return {"skipped": "torch is not installed: pip install torch==2.13.0 (the 'bench' extra) to compare"}
    B, N = plan.peer_batch, 256
    cfg_kw = {"train__engine": "tokens", "train__batch_size": B, "data__prompt_length": N}
    e = engine(**cfg_kw)
    st, c = e.static, e.consts
    d, K = c.V.shape
    out = {"batch": B, "N": N, "d": d, "K": K, "dtype": "float64 (both)", "torch_threads": torch.get_num_threads(),
           "jax_devices": [str(x) for x in jax.devices()]}

    step = jax.jit(lambda Q, s: e.update(st, c, Q, s))
    Q0 = e.init
    out["ours_step"] = timed(lambda: step(Q0, jnp.asarray(5, jnp.int64)), plan.repeats)
    pr = sample_prompts(c.key, c.probs, B, N, d)
    compute = jax.jit(lambda Q, pr: Q - c.lr * jax.grad(T.prompts_loss)(Q, st, c, pr))
    out["ours_compute"] = timed(lambda: compute(Q0, pr), plan.repeats)
    sampler = jax.jit(lambda k: sample_prompts(k, c.probs, B, N, d))
    out["ours_sampling"] = timed(lambda: sampler(c.key), plan.repeats)

    probs = np.asarray(c.probs)
    for name, literal, reps in (("restricted", False, plan.repeats), ("literal", True, plan.peer_literal_repeats)):
        peer = torch_peer.Peer(probs, N, d, B, float(c.lr), literal=literal)
        out[f"torch_{name}_step_s"] = torch_peer.time_steps(peer, reps)
        out[f"torch_{name}_compute_s"] = torch_peer.time_steps(peer, reps, presampled=True)
    # same loss on the same batch: the peer's restricted forward against ours, a correctness guard
    peer = torch_peer.Peer(probs, N, d, B, float(c.lr), literal=False)
    x = torch.tensor(np.array(jnp.moveaxis(c.V[:, pr.feat], 0, 1)))
    w = torch.tensor(np.array(pr.w))
    out["loss_agreement_abs"] = abs(peer.loss(x, w).item() - float(T.prompts_loss(Q0, st, c, pr)))
    ours, ours_c = out["ours_step"]["median_s"], out["ours_compute"]["median_s"]
    out["ratio_step_restricted"] = out["torch_restricted_step_s"] / ours
    out["ratio_compute_restricted"] = out["torch_restricted_compute_s"] / ours_c
    out["ratio_step_literal"] = out["torch_literal_step_s"] / ours
    out["sampling_share_of_our_step"] = out["ours_sampling"]["median_s"] / ours
    return out
