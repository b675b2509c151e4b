"""Section ``tokens_vs_torch``: the tokens engine against the PyTorch peers (torch_peer.py): same batch, N,
d, float64, one SGD step each.

Rows: the full step (each samples its own batch: ours with the package's sampler, the peer with
torch.multinomial), the compute alone on a fixed batch (forward, backward, update), and the literal
full-matrix peer. The share of sampling in our step is reported too. Without torch the section is skipped
with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from icl_dynamics.data import sample_prompts
from icl_dynamics.engines import tokens as T

from .common import comparison, engine, ms, pct, step_call, table, timed, times

NAME = "tokens_vs_torch"


@dataclass(frozen=True)
class Knobs:
    repeats: int = 7
    batch: int = 256
    N: int = 256
    literal_repeats: int = 3  # the literal peer is ~100x slower


FULL = Knobs()
QUICK = Knobs(repeats=3, batch=16, literal_repeats=2)


def run(k: Knobs) -> dict:
    try:
        import torch

        from . import torch_peer
    except ImportError:
        return {"skipped": "torch is not installed: pip install torch==2.13.0 (the 'bench' extra) to compare"}
    with jax.enable_x64(True):
        return _run(k, torch, torch_peer)


def _run(k: Knobs, torch, torch_peer) -> dict:
    B, N = k.batch, k.N
    e = engine(train__engine="tokens", train__batch_size=B, data__prompt_length=N)
    st, c, lr = e.static, e.consts, float(e.lr)
    d, K = c.V.shape
    out = {"batch": B, "N": N, "d": d, "K": K, "dtype": "float64 (both)", "torch_threads": torch.get_num_threads(),
           "jax_devices": [str(x) for x in jax.devices()]}

    out["ours_step"] = timed(step_call(e, step=5), k.repeats)
    pr = sample_prompts(c.key, c.probs, B, N, d)
    compute = jax.jit(lambda Q, pr: Q - e.lr * jax.grad(T.prompts_loss)(Q, st, c, pr))
    out["ours_compute"] = timed(lambda: compute(e.init, pr), k.repeats)
    sampler = jax.jit(lambda key: sample_prompts(key, c.probs, B, N, d))
    out["ours_sampling"] = timed(lambda: sampler(c.key), k.repeats)

    probs = np.asarray(c.probs)
    default = torch.get_num_threads()
    for name, literal, reps in (("restricted", False, k.repeats), ("literal", True, k.literal_repeats)):
        by = {}
        # torch's thread pool collapses when other work shares the cores (10-50x slower measured at load 4 on
        # 2 cores), so each peer gets the faster of 1 thread and the default: the ratios are conservative
        for n in sorted({1, default}):
            torch.set_num_threads(n)
            peer = torch_peer.Peer(probs, N, d, B, lr, literal=literal)
            by[str(n)] = {"step_s": torch_peer.time_steps(peer, reps),
                          "compute_s": torch_peer.time_steps(peer, reps, presampled=True)}
        torch.set_num_threads(default)
        out[f"torch_{name}_by_threads"] = by
        for what in ("step", "compute"):
            out[f"torch_{name}_{what}_s"] = min(v[f"{what}_s"] for v in by.values())
    # same loss on the same batch: the peer's restricted forward against ours, a correctness guard
    peer = torch_peer.Peer(probs, N, d, B, lr, literal=False)
    x = torch.tensor(np.array(jnp.moveaxis(c.V[:, pr.feat], 0, 1)))
    w = torch.tensor(np.array(pr.w))
    out["loss_agreement_abs"] = abs(peer.loss(x, w).item() - float(T.prompts_loss(e.init, st, c, pr)))
    ours, ours_c = out["ours_step"]["median_s"], out["ours_compute"]["median_s"]
    out["ratio_step_restricted"] = out["torch_restricted_step_s"] / ours
    out["ratio_compute_restricted"] = out["torch_restricted_compute_s"] / ours_c
    out["ratio_step_literal"] = out["torch_literal_step_s"] / ours
    out["sampling_share_of_our_step"] = out["ours_sampling"]["median_s"] / ours
    return out


def comparisons(r: dict) -> list[dict]:
    if "skipped" in r:
        return []
    ours = r["ours_step"]["median_s"]
    return [comparison(f"tokens vs torch, query column, full step (B={r['batch']})", ours,
                       r["torch_restricted_step_s"], 3, "each samples its own batch"),
            comparison("tokens vs torch, query column, compute only (same batch)", r["ours_compute"]["median_s"],
                       r["torch_restricted_compute_s"], None, "forward + backward + update"),
            comparison("tokens vs torch, literal full attention matrix, full step", ours,
                       r["torch_literal_step_s"], None, "O(B N^2 d) peer")]


def tables(r: dict) -> dict[str, str]:
    if "skipped" in r:
        return {"torch": f"(skipped in this run: {r['skipped']})"}
    rows = [["full step (sampling included)", ms(r["ours_step"]["median_s"]), ms(r["torch_restricted_step_s"]),
             times(r["ratio_step_restricted"])],
            ["compute only (same batch)", ms(r["ours_compute"]["median_s"]), ms(r["torch_restricted_compute_s"]),
             times(r["ratio_compute_restricted"])],
            ["full step, literal full-matrix peer", ms(r["ours_step"]["median_s"]), ms(r["torch_literal_step_s"]),
             times(r["ratio_step_literal"])],
            ["our sampling alone", ms(r["ours_sampling"]["median_s"]), "",
             pct(r["sampling_share_of_our_step"]) + " of our step"]]
    threads = " or ".join(sorted(r["torch_restricted_by_threads"], key=int))
    note = (f"\n\nB = {r['batch']}, N = {r['N']}, d = {r['d']}, K = {r['K']}; torch: the faster of {threads} "
            f"threads per row; the two losses on one batch differ by {r['loss_agreement_abs']:.1e}.")
    return {"torch": table(["what", "ours (ms)", "torch (ms)", "ratio"], rows) + note}
