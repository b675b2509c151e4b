"""Section ``transformer_vs_torch``: the transformer engine (``train.engine=transformer``,
``model.params=full``) against PyTorch peers of the same full-parameter model (torch_transformer_peer.py):
same batch, N, d, float64, one plain GD/SGD step each, W^{KQ} and W^{PV} both trained.

What each side computes: our engine differentiates the query column of the attention (``model.query_column``,
the only column yhat = F[d, N] depends on, O(B N d)); the ``query column`` peer computes the same, the
``literal`` peer the full (N+1) x (N+1) attention and every column of F(E) (O(B N^2 d)).

Rows: the training step on one fixed batch (ours: the gradient of the engine's ``batch_loss`` and the optax GD
update, jitted; the peers: forward, backward, ``torch.optim.SGD`` step, on the same batch converted from ours),
the full step with each side sampling its own batch (ours: the engine's ``grad``, which samples, plus the
update, as the trainer runs it; the peers: torch.multinomial + randn), for both peers; and our sampling alone.
Diagnostics of what limits our step (``transformer_torch_why``): one read of the batch's tokens, the two
token contractions an O(B N d) step cannot avoid (XLA's kernels alone), and the same step from feature tables
(benchmark code, same gradient). The training step on one batch is also timed at other sizes (B, N)
(``transformer_torch_sizes``): where PyTorch's per-operation cost dominates and where the memory traffic does.
Without torch the section is skipped with a note.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from icl_dynamics.data import sample_batch
from icl_dynamics.engines import transformer as TF

from .common import comparison, engine, ms, pct, step_call, table, timed, times

NAME = "transformer_vs_torch"
GOAL = 5  # issue 10: at least 5x per training step against the eager PyTorch peer


@dataclass(frozen=True)
class Knobs:
    repeats: int = 7
    batch: int = 256
    N: int = 256
    K: int = 16  # d = K
    literal_repeats: int = 3  # the literal peer is O(N) times slower
    sizes: tuple[tuple[int, int], ...] = ((16, 32), (64, 64), (256, 64), (1024, 256))  # (B, N), besides the above


FULL = Knobs()
QUICK = Knobs(repeats=3, batch=16, N=32, K=4, literal_repeats=2, sizes=((4, 8),))


def run(k: Knobs) -> dict:
    try:
        import torch

        from . import torch_transformer_peer
    except ImportError:
        return {"skipped": "torch is not installed: pip install torch==2.13.0 (the 'bench' extra) to compare"}
    with jax.enable_x64(True):
        return _run(k, torch, torch_transformer_peer)


@partial(jax.jit, static_argnums=(0, 1))
def _train_step(loss, optimizer, lr, state, *args):
    """A training step on a given batch: the gradient of ``loss(params, *args)`` and the optax update (what
    common._step does after the engine's ``grad`` has drawn the batch)."""
    params, opt_state = state
    updates, opt_state = optimizer.transform(lr).update(jax.grad(loss)(params, *args), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@jax.jit
def _contractions(X, M, C):
    """The two passes over the tokens that every O(B N d) step makes, alone: the forward contraction Z = X M^T
    (logits and values, M (B, 2, d)) and the gradient's dZ^T X (C (B, N+1, 2)), as the engine's
    model.query_column has them. What XLA's kernels for them cost bounds how fast a literal step can be."""
    return jnp.einsum("bnd,bcd->bnc", X, M), jnp.einsum("bnc,bnd->bcd", C, X)


def _factored_loss(params, V, feat, y, w):
    """The same loss for feature tokens (x_i = v_{f_i}) from K-sized tables, as transformer_eval's factored
    evaluation: logits G[f_i, f_q] + y_i g[f_q], values pv[f_i] + W^{PV}[d, d] y_i: O(B N) gathers instead of
    O(B N d) products. A diagnostic, not a path of the package."""
    W, P = params["W_KQ"][0], params["W_PV"][0]
    d = V.shape[0]
    fk, fq = feat[:, :-1], feat[:, -1]
    G = V.T @ W[:d, :d] @ V  # G[m, n] = v_m^T W_xx v_n
    logits = jnp.take_along_axis(G[:, fq].T, fk, 1) + y * (W[d, :d] @ V)[fq][:, None]
    v = (P[d, :d] @ V)[fk] + P[d, d] * y
    yhat = jnp.sum(jax.nn.softmax(logits, -1) * v, -1)
    return 0.5 * jnp.mean((yhat - jnp.take_along_axis(w @ V, fq[:, None], 1)[:, 0]) ** 2)


_sum = jax.jit(jnp.sum)


def _diagnostics(e, state, b, engine_loss, repeats: int) -> dict:
    """What limits our training step: one read of the batch's tokens X (B, N+1, d) as a memory-traffic
    yardstick (a forward-then-backward step reads them at least twice: the logits, then their weighted sums),
    the two token contractions alone, and the same step from feature tables (:func:`_factored_loss`) with its
    gradient against the engine's at perturbed parameters (max abs difference)."""
    c = e.consts
    B, n1, d = b.X.shape
    rng = np.random.default_rng(0)
    M, C = jnp.asarray(rng.standard_normal((B, 2, d))), jnp.asarray(rng.standard_normal((B, n1, 2)))
    out = {"read_tokens": timed(lambda: _sum(b.X), repeats),
           "contractions": timed(lambda: _contractions(b.X, M, C), repeats),
           "factored_step": timed(lambda: _train_step(_factored_loss, e.optimizer, e.lr, state, c.data.V, b.feat,
                                                      b.y, b.w), repeats)}
    params = jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape), e.init)
    want = jax.grad(engine_loss)(params, b)
    g = jax.grad(_factored_loss)(params, c.data.V, b.feat, b.y, b.w)
    out["grad_agreement_factored"] = max(float(jnp.abs(g[n] - want[n]).max()) for n in want)
    return out


def _setting(k: Knobs, B: int, N: int):
    """The engine (full params, one head, softmax over the N prompt tokens, GD) at batch B and N prompt tokens,
    and its batch of step 5 (what the peers hard-code, asserted)."""
    e = engine(train__engine="transformer", model__params="full", train__batch_size=B, data__prompt_length=N,
               data__num_features=k.K)
    st, c = e.static, e.consts
    assert (st.heads, st.attention, st.include_query, st.params) == (1, "softmax", False, "full"), st
    assert not (st.flags.gaussian or st.flags.label_noise or st.flags.token_noise), st.flags
    assert e.optimizer.name == "gd", e.optimizer
    return e, sample_batch(jax.random.fold_in(c.key, 5), c.data, st.flags, B, N)


def _peer_factory(e, tp, B: int, N: int):
    c = e.consts
    probs, V = np.asarray(c.data.probs), np.asarray(c.data.V)
    w_kq, w_pv = (np.asarray(e.init[n][0]) for n in ("W_KQ", "W_PV"))
    return lambda literal: tp.Peer(probs, V, N, B, float(e.lr), w_kq, w_pv, literal=literal)


def _torch_times(torch, tp, peer, batch, reps: int) -> dict:
    """Seconds per step of a fresh peer, sampling ('step_s') and on ``batch`` ('compute_s'), with 1 thread and
    torch's default. Torch's thread pool collapses when other work shares the cores (10-50x slower measured at
    load 4 on 2 cores), so each row keeps the faster of the two: the ratios are conservative."""
    default, by = torch.get_num_threads(), {}
    for n in sorted({1, default}):
        torch.set_num_threads(n)
        by[str(n)] = {"step_s": tp.time_steps(peer(), reps), "compute_s": tp.time_steps(peer(), reps, batch=batch)}
    torch.set_num_threads(default)
    return {"by_threads": by, **{w: min(v[w] for v in by.values()) for w in ("step_s", "compute_s")}}


def _engine_loss(e):
    def loss(params, b):
        return TF.batch_loss(params, e.static, e.consts, b)

    return loss


def _compute_call(e, b):
    """Our training step on the given batch: the gradient of the engine's loss and the optax GD update."""
    state, loss = (e.init, e.optimizer.transform(e.lr).init(e.init)), _engine_loss(e)
    return lambda: _train_step(loss, e.optimizer, e.lr, state, b)  # one loss object: one compilation


def _torch_batch(torch, b):
    return tuple(torch.tensor(np.asarray(a)) for a in (b.X, b.y, b.w))  # our batch, as the peers' tensors


def _by_size(k: Knobs, torch, tp) -> list[dict]:
    """The training step on one batch, ours against the query-column peer, at the sizes in ``k.sizes``."""
    rows = []
    for B, N in k.sizes:
        e, b = _setting(k, B, N)
        peer = _peer_factory(e, tp, B, N)
        ours = timed(_compute_call(e, b), k.repeats)["median_s"]
        theirs = _torch_times(torch, tp, lambda: peer(False), _torch_batch(torch, b), k.repeats)["compute_s"]
        rows.append({"batch": B, "N": N, "ours_s": ours, "torch_s": theirs, "ratio": theirs / ours})
    return rows


def _run(k: Knobs, torch, tp) -> dict:
    started, load_start = time.time(), os.getloadavg()
    B, N = k.batch, k.N
    e, b = _setting(k, B, N)
    c = e.consts
    d, K = c.data.V.shape
    out = {"batch": B, "N": N, "d": d, "K": K, "params": "full: W_KQ, W_PV, (d+1) x (d+1) each",
           "dtype": "float64 (both)", "lr": float(e.lr), "torch_threads": torch.get_num_threads(),
           "jax_devices": [str(x) for x in jax.devices()],
           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}

    out["ours_step"] = timed(step_call(e, step=5), k.repeats)
    out["ours_compute"] = timed(_compute_call(e, b), k.repeats)
    sampler = jax.jit(lambda key: sample_batch(key, c.data, e.static.flags, B, N))
    out["ours_sampling"] = timed(lambda: sampler(c.key), k.repeats)
    state = (e.init, e.optimizer.transform(e.lr).init(e.init))
    out["diagnostics"] = _diagnostics(e, state, b, _engine_loss(e), k.repeats)

    batch, peer = _torch_batch(torch, b), _peer_factory(e, tp, B, N)
    for name, literal, reps in (("query_column", False, k.repeats), ("literal", True, k.literal_repeats)):
        t = _torch_times(torch, tp, lambda literal=literal: peer(literal), batch, reps)
        out[f"torch_{name}_by_threads"] = t["by_threads"]
        out[f"torch_{name}_step_s"], out[f"torch_{name}_compute_s"] = t["step_s"], t["compute_s"]

    # a correctness guard: each peer's loss and gradient on the timed batch against ours, at the timed params
    loss, g = jax.value_and_grad(_engine_loss(e))(e.init, b)
    for name, literal in (("query_column", False), ("literal", True)):
        p = peer(literal)
        lt = p.loss(*batch)
        lt.backward()
        out[f"agreement_{name}"] = {
            "loss_abs": abs(lt.item() - float(loss)),
            "grad_abs": max(float(np.abs(p.W_KQ.grad.numpy() - np.asarray(g["W_KQ"][0])).max()),
                            float(np.abs(p.W_PV.grad.numpy() - np.asarray(g["W_PV"][0])).max()))}
    out["loss_at_init"] = float(loss)

    ours, ours_c = out["ours_step"]["median_s"], out["ours_compute"]["median_s"]
    for name in ("query_column", "literal"):
        out[f"ratio_compute_{name}"] = out[f"torch_{name}_compute_s"] / ours_c
        out[f"ratio_step_{name}"] = out[f"torch_{name}_step_s"] / ours
    out["sampling_share_of_our_step"] = out["ours_sampling"]["median_s"] / ours
    dg = out["diagnostics"]
    for name in ("contractions", "factored_step"):
        dg[f"ratio_{name}"] = out["torch_query_column_compute_s"] / dg[name]["median_s"]
    out["by_size"] = _by_size(k, torch, tp)
    out["goal"] = GOAL
    out["load_avg"] = [load_start[0], os.getloadavg()[0]]
    return out


def comparisons(r: dict) -> list[dict]:
    if "skipped" in r:
        return []
    return [comparison(f"transformer vs torch (full params), query column, training step, same batch (B={r['batch']})",
                       r["ours_compute"]["median_s"], r["torch_query_column_compute_s"], GOAL,
                       "grad + GD update; both compute the query column"),
            comparison("transformer vs torch (full params), query column, full step", r["ours_step"]["median_s"],
                       r["torch_query_column_step_s"], None, "each samples its own batch"),
            comparison("transformer vs torch (full params), literal full attention matrix, same batch",
                       r["ours_compute"]["median_s"], r["torch_literal_compute_s"], None, "O(B N^2 d) peer")]


def tables(r: dict) -> dict[str, str]:
    if "skipped" in r:
        return dict.fromkeys(("transformer_torch", "transformer_torch_why", "transformer_torch_sizes"), f"(skipped in this run: {r['skipped']})")
    oc, os_ = ms(r["ours_compute"]["median_s"]), ms(r["ours_step"]["median_s"])
    rows = [["training step, same batch (grad + GD update)", "query column", "query column", oc,
             ms(r["torch_query_column_compute_s"]), times(r["ratio_compute_query_column"])],
            ["full step, each samples its own batch", "query column", "query column", os_,
             ms(r["torch_query_column_step_s"]), times(r["ratio_step_query_column"])],
            ["training step, same batch, literal peer", "query column", "full (N+1)^2 attention", oc,
             ms(r["torch_literal_compute_s"]), times(r["ratio_compute_literal"])],
            ["full step, literal peer", "query column", "full (N+1)^2 attention", os_,
             ms(r["torch_literal_step_s"]), times(r["ratio_step_literal"])],
            ["our sampling alone", "", "", ms(r["ours_sampling"]["median_s"]), "",
             pct(r["sampling_share_of_our_step"]) + " of our full step"]]
    threads = " or ".join(sorted(r["torch_query_column_by_threads"], key=int))
    agree = max(max(r[f"agreement_{n}"].values()) for n in ("query_column", "literal"))
    note = (f"\n\nB = {r['batch']}, N = {r['N']}, d = {r['d']}, K = {r['K']}, params = full "
            f"(2 x {r['d'] + 1} x {r['d'] + 1}), float64, lr = {r['lr']:g}; torch: the faster of {threads} "
            f"threads per row; both peers' losses and gradients on the timed batch differ from ours by at most "
            f"{agree:.1e}; this section started {r['started_utc']} at load {r['load_avg'][0]:.1f} "
            f"(end {r['load_avg'][1]:.1f}).")
    dg, torch_c = r["diagnostics"], r["torch_query_column_compute_s"]
    read = dg["read_tokens"]["median_s"]
    mb = r["batch"] * (r["N"] + 1) * r["d"] * 8 / 1e6
    why = [["our training step (the engine: model.query_column, one contraction of X forward, one backward)", oc,
            times(r["ratio_compute_query_column"]), f"{r['ours_compute']['median_s'] / read:.2g}"],
           ["its two token contractions alone (XLA's kernels: X M^T forward, dZ^T X backward)",
            ms(dg["contractions"]["median_s"]), times(dg["ratio_contractions"]),
            f"{dg['contractions']['median_s'] / read:.2g}"],
           ["the same step from feature tables (x_i = v_{f_i}): O(B N) gathers, not O(B N d); not literal",
            ms(dg["factored_step"]["median_s"]), times(dg["ratio_factored_step"]),
            f"{dg['factored_step']['median_s'] / read:.2g}"],
           [f"one read of the batch's tokens X (B (N+1) d float64, {mb:.3g} MB)", ms(read), "", "1"],
           ["floor of the O(B N d) step: two reads of X (logits, then their weighted sums)", ms(2 * read),
            times(torch_c / (2 * read)), "2"]]
    why_note = (f"\n\nRatio: the torch query-column training step ({ms(torch_c)} ms) / this row. The contractions and "
                f"the feature-table step are benchmark code (transformer_peer.py), not paths of the package; the "
                f"feature-table gradient equals the engine's to {dg['grad_agreement_factored']:.1e} at perturbed "
                f"parameters.")
    sizes = [[str(s["batch"]), str(s["N"]), ms(s["ours_s"]), ms(s["torch_s"]), times(s["ratio"]),
              "yes" if s["ratio"] >= r["goal"] else "no"] for s in r["by_size"]]
    sizes.append([f"{r['batch']} (the goal's row)", str(r["N"]), oc, ms(torch_c), times(r["ratio_compute_query_column"]),
                  "yes" if r["ratio_compute_query_column"] >= r["goal"] else "no"])
    sizes_note = (f"\n\nd = K = {r['K']}; training step on one batch (grad + GD update) against the query-column peer, "
                  f"the faster of its thread counts; same run.")
    return {"transformer_torch": table(["what", "ours computes", "torch computes", "ours (ms)", "torch (ms)",
                                        "ratio"], rows) + note,
            "transformer_torch_why": table(["step", "time (ms)", "ratio", "in reads of X"], why) + why_note,
            "transformer_torch_sizes": table(["B", "N", "ours (ms)", "torch (ms)", "ratio", f">= {r['goal']}x"],
                                             sizes) + sizes_note}
