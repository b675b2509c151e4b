"""Numerical safety (stable softmax at huge scores, lr = 1e4) and divergence handling (issue 5).

Ground truths used here: softmax attention depends only on score differences within a query row, so adding a
constant c to a row (population) or to every logit (tokens, with v_k = e_k) changes nothing, while a naive
exp(c) overflows for c >= 710; and the spec's closed-form gradient at Q = 0 (section 5) gives the scores and
loss after one step.
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icl_dynamics import cli
from icl_dynamics.config import load_config
from icl_dynamics.data import count_table, feature_probs
from icl_dynamics.model import embed, predict
from icl_dynamics.engines import build_engine, population
from icl_dynamics.storage import load_run
from icl_dynamics.trainer import FAULT_ENV, fault_step_from_env, log_schedule, train


SMALL_TOKENS = ["train.engine=tokens", "data.num_features=3", "data.prompt_length=8", "train.batch_size=8",
                "train.eval_prompts=8"]


@functools.partial(jax.jit, static_argnums=(3,))
def _population_all(s, probs, table, include_query):
    fl, at = population.per_query(s, table, include_query)
    return fl, at, jax.grad(population.population_loss)(s, probs, table, include_query)


@pytest.mark.parametrize("include_query", [False, True])
def test_population_shift_invariant_at_huge_scores(include_query):
    cfg = load_config(None, ["data.num_features=4", "data.prompt_length=6"])
    probs = jnp.asarray(feature_probs(cfg.data))
    table = count_table("enumerate", 6, np.asarray(probs), key=None, samples=1, max_exact=10**6)
    s = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)) * 3)
    # include_query adds the query's own column at score s[k, k], which shifts with its row too.
    ref = _population_all(s, probs, table, include_query)
    for shift in (1e3, 1e4, -1e4):
        got = _population_all(s + shift, probs, table, include_query)
        for a, b in zip(got, ref):
            assert np.all(np.isfinite(np.asarray(a)))
            # a shift of 1e4 leaves ~1e4 * 2^-52 ~ 2e-12 absolute error in the differences: tolerance 1e-9
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_population_saturated_attention_is_exact():
    # scores = 1e3 I: own mass 1 - O(N e^-1000) = 1.0 in float64 whenever n_k > 0, so only prompts without
    # feature k err. With n_k = 0 and the other two at equal scores, a_m = n_m / N and f = 1 + sum a_m^2:
    # feature_loss = 1/2 sum_j C(5, j) 3^-5 (1 + (j^2 + (5 - j)^2) / 25)   (K = 3 balanced, N = 5)
    cfg = load_config(None, ["data.num_features=3", "data.prompt_length=5", "data.probs=balanced"])
    probs = jnp.asarray(feature_probs(cfg.data))
    table = count_table("enumerate", 5, np.asarray(probs), key=None, samples=1, max_exact=10**6)
    fl, at, g = _population_all(jnp.eye(3) * 1e3, probs, table, False)
    floor = 0.5 * sum(math.comb(5, j) / 3**5 * (1 + (j**2 + (5 - j) ** 2) / 25) for j in range(6))
    np.testing.assert_allclose(fl, floor, rtol=1e-12)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(at)))


@pytest.mark.parametrize("include_query", [False, True])
def test_tokens_forward_shift_invariant_at_huge_scores(include_query):
    """The tokens engine differentiates model.predict; check it, value and gradient, at logits ~1e4."""
    rng = np.random.default_rng(1)
    K, N, B = 3, 8, 5
    x = jnp.asarray(np.eye(K)[:, rng.integers(0, K, size=(B, N + 1))].transpose(1, 0, 2))  # (B, d, N+1)
    w = rng.normal(size=(B, K))
    E = embed(x, jnp.einsum("bdi,bd->bi", x, w))
    Q = jnp.asarray(rng.normal(size=(K, K)))

    @jax.jit
    def value_and_grad(Q):
        return jax.value_and_grad(lambda q: jnp.sum(predict(E, q, include_query) ** 2))(Q)

    l0, g0 = value_and_grad(Q)
    # with v_k = e_k every logit x_i^T Q x_q (and the query's own) is an entry of Q: Q + c 11^T shifts all
    for c in (1e3, 1e4, -1e4):
        l1, g1 = value_and_grad(Q + c)
        assert np.isfinite(l1) and np.all(np.isfinite(np.asarray(g1)))
        np.testing.assert_allclose(l1, l0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9)
    l2, g2 = value_and_grad(1e4 * jnp.eye(K))  # saturated on own-feature tokens: finite
    assert np.isfinite(l2) and np.all(np.isfinite(np.asarray(g2)))


def test_lr_1e4_mean_field_converges_in_one_step(tmp_path):
    """Default imbalanced setting (K=16, N=256, p_1=0.5), mean field, lr = 1e4: finite, loss < 1e-6."""
    out = tmp_path / "run"
    code = cli.main(["train", "--quiet", "--out", str(out), "--set", "train.lr=1e4",
                     "--set", "train.expectation=mean_field", "--set", "train.steps=50"])
    assert code == 0
    run = load_run(out)
    assert run.summary["status"] == "completed"
    for a in run.trajectory:
        assert np.all(np.isfinite(a))
    assert run.trajectory.loss[-1] < 1e-6  # the bound

    # Spec section 5 at Q = 0 with mean-field counts n = N p: a_m = p_m, and
    # dL/ds[k, j] = p_k a_j [(a_j - delta_jk) - (sum_m a_m^2 - a_k)]; one step gives s = -lr * grad.
    p = feature_probs(run.config.data)
    K = len(p)
    a = np.broadcast_to(p, (K, K))
    grad = p[:, None] * a * ((a - np.eye(K)) - (np.sum(p**2) - p)[:, None])
    s1 = -1e4 * grad
    row = int(np.flatnonzero(run.trajectory.steps == 1)[0])
    np.testing.assert_allclose(run.trajectory.scores[row], s1, rtol=1e-10, atol=1e-10)
    # loss at step 1 from s1, by the spec's formula, shifted per row for stability (numpy, not the package)
    z = np.log(256 * p)[None, :] + s1
    am = np.exp(z - z.max(1, keepdims=True))
    am /= am.sum(1, keepdims=True)
    fl = 0.5 * ((1 - np.diag(am)) ** 2 + np.sum(am**2, 1) - np.diag(am) ** 2)
    assert p @ fl < 1e-6
    # loss ~1e-8 is computed as 1 - 2a + sum a^2, which carries ~1e-16 round-off: tolerance 1e-13
    np.testing.assert_allclose(run.trajectory.loss[row], p @ fl, rtol=0, atol=1e-13)


def test_fault_env_parsing(monkeypatch):
    from icl_dynamics.errors import ConfigError

    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert fault_step_from_env() is None
    monkeypatch.setenv(FAULT_ENV, "nan@7")
    assert fault_step_from_env() == 7
    for bad in ["nan@0", "nan", "inf@3", "nan@-2", "nan@x"]:
        monkeypatch.setenv(FAULT_ENV, bad)
        with pytest.raises(ConfigError, match=FAULT_ENV):
            fault_step_from_env()


def test_divergence_detected_on_its_step_and_prefix_kept():
    # every row up to the fault equals the clean run's: the trainer keeps the last finite params
    cfg = load_config(None, ["data.num_features=4", "train.expectation=mean_field", "train.steps=400"])
    eng = build_engine(cfg)
    sched = log_schedule(400)
    clean = train(eng, sched, progress=False)
    for fault in (1, 123):  # each fault step compiles anew (it is static); 123 is shared with the CLI test
        res = train(eng, sched, progress=False, fault_step=fault)
        assert res.status == "diverged" and res.diverged_at == fault
        t = res.trajectory
        assert t.steps[-1] == fault - 1  # the row where the loop stopped is logged at the last finite step
        n = int(np.sum(sched < fault))
        np.testing.assert_array_equal(t.steps[:n], clean.trajectory.steps[:n])
        np.testing.assert_array_equal(t.scores[:n], clean.trajectory.scores[:n])
        assert np.all(np.isfinite(t.scores)) and np.all(np.isfinite(t.loss))
        np.testing.assert_array_equal(res.params, t.scores[-1])  # population params are the scores


@pytest.mark.parametrize("engine_args,fault", [(["train.expectation=mean_field", "data.num_features=4"], 123),
                                               (SMALL_TOKENS, 45)], ids=["population", "tokens"])
def test_injected_nan_exit_3_partial_trajectory(tmp_path, monkeypatch, capsys, engine_args, fault):
    monkeypatch.setenv(FAULT_ENV, f"nan@{fault}")
    out = tmp_path / "run"
    argv = ["train", "--quiet", "--out", str(out), "--set", "train.steps=400"]
    for a in engine_args:
        argv += ["--set", a]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and f"diverged at step {fault}" in err[0] and "smaller train.lr" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == fault
    run = load_run(out)  # the partial trajectory is a readable run
    assert run.trajectory.steps[-1] == fault - 1
    assert all(np.all(np.isfinite(a)) for a in run.trajectory)
    assert not (out / "checkpoint.npz").exists()


def test_batched_watch_equals_one_run_at_a_time():
    """train_batched with one Watch per member (the eval: block in a sweep) gives each member's own
    trajectory and watched rows as train does alone: the same float64 arithmetic under vmap, to 1e-13
    relative, 1e-15 absolute for entries that are round-off around 0 (vmap may reorder reductions)."""
    from icl_dynamics.evaluate import eval_watch
    from icl_dynamics.trainer import train_batched

    cfgs = [load_config(None, ["data.num_features=4", "train.expectation=mean_field", "train.steps=400",
                               f"train.lr={lr}", "eval={data.probs: balanced, data.prompt_length: 64}"])
            for lr in (0.5, 1.0)]
    schedule = log_schedule(400)
    batch = train_batched([build_engine(c) for c in cfgs], schedule, watches=[eval_watch(c) for c in cfgs])
    for c, got in zip(cfgs, batch):
        want = train(build_engine(c), schedule, progress=False, watch=eval_watch(c))
        for a, b in zip((*got.trajectory, *got.watched), (*want.trajectory, *want.watched)):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert not np.allclose(batch[0].watched.loss, batch[1].watched.loss)  # the members differ
