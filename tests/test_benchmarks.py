"""The benchmark suite's own correctness (never its timings): its exact reference, its PyTorch peer, the
fast paths it measures (matrix-product population step, no recompilation on new values), its sweep
comparison, the exact section's instruments (step loop, gradient counter, the shared tokens fit), and
docs/performance.md's tables against the committed benchmarks/results.json.

Run from the repository root (``python -m pytest``, as ``make test`` does), so ``benchmarks`` imports.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accuracy, exact, report, sweep_bench
from benchmarks.exact_reference import SymmetricExact
from icl_dynamics import trainer
from icl_dynamics.config import RunConfig, TrainConfig, with_overrides
from icl_dynamics.engines import build_engine
from icl_dynamics.engines import population as P
from icl_dynamics.engines import tokens as T


def cfg(**dotted):
    return with_overrides(RunConfig(), {k.replace("__", "."): v for k, v in dotted.items()})


# the engine's exact expectations: count-vector enumeration ("exact" in older configs, "enumerate" since the
# closed form took the name "exact") and the closed form; the reference must equal each one offered
EXACT_KINDS = [k for k in ("exact", "enumerate")
               if k in typing.get_args(TrainConfig.model_fields["expectation"].annotation)]


@pytest.mark.parametrize("expectation", EXACT_KINDS)
def test_symmetric_reference_equals_exact_expectation(expectation):
    """Both compute the same finite expectation (165 count vectors vs a trinomial sum; or the engine's closed
    form) and GD runs for 200 steps at a stable lr: round-off only, so 1e-10 relative."""
    c = cfg(data__num_features=4, data__prompt_length=8, data__dominant_prob=0.55, train__expectation=expectation,
            train__steps=200, train__log_every=20, train__lr=2.0)
    traj = trainer.run_training(c, progress=False).trajectory
    ref, scores = SymmetricExact(4, 8, 0.55).run(2.0, 200, traj.steps)
    np.testing.assert_allclose(ref, traj.feature_loss, rtol=1e-10)
    np.testing.assert_allclose(scores, traj.scores, rtol=1e-10, atol=1e-12)
    assert np.abs(scores[-1]).max() > 0.5  # the dynamics moved


@pytest.mark.parametrize("scale", [0.1, 5.0, 1e3])
@pytest.mark.parametrize("include_query", [False, True])
def test_population_step_matches_autodiff_path(scale, include_query):
    """update/observe (matrix path, or the exact fallback when a row's spread exceeds SPREAD_MAX) against
    autodiff of the generic per-entry softmax: sums of 512 O(1) terms, so 1e-13 absolute (round-off)."""
    e = build_engine(cfg(data__num_features=5, data__prompt_length=12, train__expectation="monte_carlo",
                         train__count_samples=512, model__include_query_in_softmax=include_query))
    S = jnp.asarray(np.random.default_rng(1).normal(scale=scale, size=(5, 5)))
    c = e.consts
    want = jax.grad(P.population_loss)(S, c.probs, c.table, include_query)
    got = e.grad(e.static, c, S, 0)
    assert bool(jnp.all(jnp.isfinite(got)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    fl, att = P.per_query(S, c.table, include_query)
    m = e.observe(e.static, c, S)
    np.testing.assert_allclose(m.feature_loss, fl, rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.attention, att, rtol=0, atol=1e-13)


def test_population_step_under_vmap_with_mixed_paths():
    """A vmapped batch where one member needs the fallback: every member still equals its own generic step
    (custom_vmap keeps lax.cond a branch over the whole batch)."""
    e = build_engine(cfg(data__num_features=4, data__prompt_length=10, train__expectation="monte_carlo",
                         train__count_samples=256))
    c = e.consts
    rng = np.random.default_rng(2)
    Ss = jnp.asarray(np.stack([rng.normal(size=(4, 4)), rng.normal(scale=1e3, size=(4, 4))]))
    got = jax.vmap(lambda s: e.grad(e.static, c, s, 0))(Ss)
    for s, g in zip(Ss, got):
        np.testing.assert_allclose(g, jax.grad(P.population_loss)(s, c.probs, c.table), atol=1e-13)


def test_no_recompilation_when_only_values_change():
    """The chunk function is compiled once per shape: new lr, probabilities and seed reuse it (0 compilations)."""
    small = dict(data__num_features=3, data__prompt_length=16, train__expectation="mean_field", train__steps=20)
    schedule = trainer.log_schedule(20)
    trainer.train(build_engine(cfg(**small)), schedule, progress=False)
    other = build_engine(cfg(**small, train__lr=0.3, data__dominant_prob=0.8, seed=5))
    with trainer.compilations() as compiled:
        trainer.train(other, schedule, progress=False)
    assert compiled == []


def test_torch_peer_computes_our_loss_and_gradient():
    """The peers' restricted and literal forward passes give our tokens loss and gradient on one batch
    (float64, sums of ~B N terms: 1e-12)."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_peer

    e = build_engine(cfg(train__engine="tokens", data__num_features=4, data__prompt_length=9,
                         train__batch_size=6))
    st, c = e.static, e.consts
    Q = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)))
    pr = jax.tree.map(jnp.asarray, T.sample_prompts(c.key, c.probs, 6, 9, 4))
    loss, grad = jax.value_and_grad(T.prompts_loss)(Q, st, c, pr)
    x = torch.tensor(np.array(jnp.moveaxis(c.V[:, pr.feat], 0, 1)))
    w = torch.tensor(np.array(pr.w))
    for literal in (False, True):
        peer = torch_peer.Peer(np.asarray(c.probs), 9, 4, 6, 1.0, literal=literal)
        with torch.no_grad():
            peer.Q.copy_(torch.tensor(np.array(Q)))
        lt = peer.loss(x, w)
        lt.backward()
        assert abs(lt.item() - float(loss)) < 1e-12
        np.testing.assert_allclose(peer.Q.grad.numpy(), np.asarray(grad), atol=1e-12)


def test_transformer_torch_peer_computes_our_loss_and_gradient():
    """Both transformer peers (query column, literal full attention matrix) give the transformer engine's loss
    and gradient in W^{KQ} and W^{PV} (model.params=full) on one batch of our engine's prompts, at random
    parameters (float64, sums of ~B N terms: 1e-12); so does the section's benchmark-only feature-table step."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_transformer_peer, transformer_peer
    from icl_dynamics.data import sample_batch
    from icl_dynamics.engines import transformer as TF

    e = build_engine(cfg(train__engine="transformer", model__params="full", data__num_features=4,
                         data__prompt_length=9, train__batch_size=6))
    st, c = e.static, e.consts
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        params = {n: jnp.asarray(rng.normal(size=(1, 5, 5))) for n in ("W_KQ", "W_PV")}
        b = sample_batch(jax.random.fold_in(c.key, 2), c.data, st.flags, 6, 9)
        loss, grad = jax.value_and_grad(TF.batch_loss)(params, st, c, b)
        g = jax.grad(transformer_peer._factored_loss)(params, c.data.V, b.feat, b.y, b.w)
        for n in grad:
            np.testing.assert_allclose(np.asarray(g[n]), np.asarray(grad[n]), rtol=0, atol=1e-12)
    assert float(loss) > 1e-3  # a batch with something to fit
    batch = [torch.tensor(np.asarray(a)) for a in (b.X, b.y, b.w)]
    for literal in (False, True):
        peer = torch_transformer_peer.Peer(np.asarray(c.data.probs), np.asarray(c.data.V), 9, 6, 1.0,
                                           np.asarray(params["W_KQ"][0]), np.asarray(params["W_PV"][0]),
                                           literal=literal)
        lt = peer.loss(*batch)
        lt.backward()
        assert abs(lt.item() - float(loss)) < 1e-12
        np.testing.assert_allclose(peer.W_KQ.grad.numpy(), np.asarray(grad["W_KQ"][0]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(peer.W_PV.grad.numpy(), np.asarray(grad["W_PV"][0]), rtol=0, atol=1e-12)


def test_merge_replaces_only_the_sections_run():
    """``run --only S --merge``: section S and its knobs come from the new run, noted as such; every other
    section, and the old run's meta, are kept as they were."""
    from benchmarks.run import _merged

    old = {"meta": {"started_utc": "old", "knobs": {"a": 1, "b": 2}}, "a": {"x": 1}, "b": {"x": 2}}
    new = {"meta": {"started_utc": "new", "wall_s": 3.0, "knobs": {"b": 20},
                    "machine": {"load_avg_start": [1.0], "load_avg_end": [2.0]}}, "b": {"x": 20}}
    got = _merged(old, new, ["b"])
    assert got["a"] == {"x": 1} and got["meta"]["started_utc"] == "old"
    assert got["b"]["x"] == 20 and got["b"]["run"]["started_utc"] == "new" and got["b"]["run"]["load_avg"] == [1, 2]
    assert got["meta"]["knobs"] == {"a": 1, "b": 20}


def test_sweep_section_compares_train_batched_with_train():
    """The sweep section's two sides run the same configs on the package's paths: equal losses to
    round-off (1e-12 absolute on O(1) losses), and nothing compiles while timed (tolerance 0)."""
    r = sweep_bench.run_case("mean_field", 4, 30)
    assert r["configs"] == 4 and r["all_completed"]
    assert r["max_abs_loss_diff"] < 1e-12
    assert r["compilations_while_timed"] == 0


def test_exact_section_step_loop_is_the_trainers_arithmetic():
    """The loop that times goal 2 runs the trainer's GD steps: the same parameters after 40 steps (the same
    float64 operations in another loop: 1e-14 relative)."""
    e = build_engine(cfg(data__num_features=4, data__prompt_length=32, train__steps=40))
    with jax.enable_x64(True):
        params, _ = exact.steps_call(e, 40)()
    want = trainer.train(e, trainer.log_schedule(40), progress=False).params
    np.testing.assert_allclose(np.asarray(params), np.asarray(want), rtol=1e-14, atol=1e-16)


def test_exact_section_counts_every_gradient_evaluation():
    """Goal 4 counts the flow's gradient evaluations with a host callback in the engine's gradient: on a GD
    run it counts exactly one per step (tolerance 0) and changes no number."""
    e = build_engine(cfg(data__num_features=4, data__prompt_length=32, train__expectation="mean_field",
                         train__steps=37))
    counts = {"grad": 0}
    counted = trainer.train(exact._counting(e, counts), trainer.log_schedule(37), progress=False)
    assert counts["grad"] == 37
    plain = trainer.train(e, trainer.log_schedule(37), progress=False)
    np.testing.assert_array_equal(counted.trajectory.feature_loss, plain.trajectory.feature_loss)


def test_exact_section_reuses_the_accuracy_sections_tokens_fit(monkeypatch):
    """Goal 3 takes the tokens side from population_vs_tokens's cache (computed once per process and knobs:
    'reused' when that section ran first), and the closed form matches the symmetric exact reference at
    K=16, N=256 (1e-10 relative)."""
    calls = []

    @functools.cache
    def tokens_side(k):
        calls.append(k)
        return {"tokens_choice": {"B": 100.0, "run_s": 50.0, "extrapolated": True}}

    monkeypatch.setattr(accuracy, "tokens_side", tokens_side)
    tiny = dataclasses.replace(accuracy.QUICK, repeats=1, steps=30, log_every=10)
    first = exact.against_tokens(exact.Knobs(accuracy=tiny))
    second = exact.against_tokens(exact.Knobs(accuracy=tiny))
    assert calls == [tiny]
    assert first["tokens_side"] == "computed here" and second["tokens_side"] == "reused from population_vs_tokens"
    assert second["ratio"] == 50.0 / second["run_s"]
    assert second["rel_error"] < 1e-10


def test_docs_tables_equal_the_generated_ones():
    """Every marked table of docs/performance.md equals what benchmarks/report.py makes of the committed
    benchmarks/results.json (tolerance: 0 differing tables; fix with ``python -m benchmarks.report``)."""
    res = json.loads(report.RESULTS.read_text())
    text = report.DOCS.read_text()
    new, unmarked, unknown = report.rewrite(text, res)
    have = {m["name"]: m["body"] for m in report.BLOCK.finditer(text)}
    want = {m["name"]: m["body"] for m in report.BLOCK.finditer(new)}
    stale = sorted(n for n in want if have.get(n) != want[n])
    assert stale == [], f"stale tables in docs/performance.md: {stale}"
    assert unmarked == [] and unknown == []
    assert len(have) == len(report.blocks(res)) >= 12
