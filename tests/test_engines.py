"""The tokens engine (sampled prompts, literal model) and the population engine (reduced dynamics) agree."""

from __future__ import annotations

import numpy as np

import helpers as H
from icl_dynamics.config import validate
from icl_dynamics.engines import build_engine
from icl_dynamics.trainer import log_schedule, train

T, B, LR = 300, 2048, 1.0


def config(engine, K, d, N, probs, include_query, seed=0):
    return validate({
        "data": {"num_features": K, "dim": d, "prompt_length": N, "probs": probs},
        "model": {"include_query_in_softmax": include_query},
        "train": {"engine": engine, "expectation": "exact", "lr": LR, "steps": T, "batch_size": B,
                  "eval_prompts": 512, "log_every": 1},
        "seed": seed,
    })


def per_prompt_grads(S, p, N, include_query, M, rng):
    """Per-prompt gradients of 1/2 (yhat - y_q)^2 in scores coordinates (M, K*K), in numpy, for sampled
    prompts at scores S. With u = V^T w ~ N(0, I_K) the labels are y_i = u[f_i], y_q = u[k]; the logit of
    token i is z_i = S[k, f_i] (the query's own column: S[k, k], label 0), and
    d/dz_j 1/2 (yhat - y_q)^2 = (yhat - y_q) a_j (y_j - yhat)."""
    K = len(p)
    kq = rng.choice(K, size=M, p=p)
    F = rng.choice(K, size=(M, N), p=p)
    U = rng.normal(size=(M, K))
    y = np.take_along_axis(U, F, axis=1)  # (M, N)
    z = S[kq[:, None], F]
    zq = S[kq, kq]
    top = np.maximum(z.max(1), zq) if include_query else z.max(1)
    e, eq = np.exp(z - top[:, None]), np.exp(zq - top)
    Z = e.sum(1) + (eq if include_query else 0.0)
    a, aq = e / Z[:, None], (eq / Z if include_query else np.zeros(M))
    yhat = (a * y).sum(1)
    r = yhat - U[np.arange(M), kq]
    dz = r[:, None] * a * (y - yhat[:, None])  # (M, N)
    row = np.einsum("mn,mnk->mk", dz, np.eye(K)[F])
    row[np.arange(M), kq] += r * aq * (0.0 - yhat)
    G = np.zeros((M, K, K))
    G[np.arange(M), kq] = row
    return G.reshape(M, K * K)


def noise_bound(S, p, N, include_query, rng):
    """Standard deviation of tokens-minus-population scores at each step, in the linear-noise approximation.

    One SGD step is the GD step plus lr * xi_t, with xi_t the batch-gradient noise in scores coordinates.
    Linearised about the population path, the deviation obeys D_{t+1} = (I - lr H_t) D_t + lr xi_t, so its
    covariance obeys Sigma_{t+1} = J Sigma J^T + lr^2 C_t <= J Sigma J^T + lr^2 c_t I, c_t the largest
    eigenvalue of C_t. A batch gradient is a mean of B i.i.d. per-prompt gradients, so C_t = C_t(1) / B,
    C_t(1) estimated from 20000 sampled prompts every 50 steps (held in between; times 1.2 against its
    sampling error); H_t is taken every 10 steps. Also returns the mean per-prompt gradients.
    Returns sd (T, K*K) of each score entry after steps 1..T, and [(S_t, mean, standard error)].
    """
    K = S.shape[1]
    counts, weights = H.exact_table(N, p)
    c, means = [], []
    for s in S[:T:50]:
        G = per_prompt_grads(s, p, N, include_query, 20_000, rng)
        c.append(1.2 * np.linalg.eigvalsh(np.cov(G.T)).max() / B)
        means.append((s, G.mean(0), G.std(0, ddof=1) / np.sqrt(len(G))))
    Hs = [H.hessian(s, p, counts, weights, include_query) for s in S[:T:10]]
    Sigma, sd = np.zeros((K * K, K * K)), []
    for t in range(T):
        J = np.eye(K * K) - LR * Hs[t // 10]
        Sigma = J @ Sigma @ J.T + LR**2 * c[t // 50] * np.eye(K * K)
        sd.append(np.sqrt(np.diag(Sigma)))
    return np.array(sd), means


def test_tokens_and_population_trajectories_agree():
    """Over T = 300 steps at lr = 1 the scores move by O(1); the tokens run (K=3, d=5 so V is a random
    orthonormal frame, query in the softmax) must stay within 5 standard deviations (linear-noise
    approximation, see noise_bound) of the exact population run at every step and every entry."""
    K, d, N, probs, include_query = 3, 5, 8, [0.5, 0.25, 0.25], True
    schedule = log_schedule(T, 1)
    tok = build_engine(config("tokens", K, d, N, probs, include_query))
    pop = build_engine(config("population", K, d, N, probs, include_query))
    St = train(tok, schedule, progress=False).trajectory
    Sp = train(pop, schedule, progress=False).trajectory
    assert np.array_equal(St.steps, Sp.steps) and St.steps[-1] == T
    p = np.asarray(tok.consts.probs)
    counts, w = H.exact_table(N, p)

    sd, means = noise_bound(Sp.scores, p, N, include_query, np.random.default_rng(5))
    # the per-prompt gradients of the sampled-prompt loss average to the population gradient (5 SE)
    for s, mean, se in means:
        assert np.all(np.abs(mean - H.grad(s, p, counts, w, include_query).ravel()) <= 5 * se + 1e-12)
    z = (St.scores - Sp.scores)[1:].reshape(T, -1) / sd
    assert np.abs(z).max() <= 5, np.abs(z).max()
    # the tolerance is meaningful: 5 sd is a small fraction of how far the scores move, and an index-order
    # bug (scores transposed; they are asymmetric here) would be caught
    assert 5 * sd.max() < 0.1 * np.abs(Sp.scores[-1]).max()
    assert np.abs(St.scores[-1].T - Sp.scores[-1]).max() > 5 * sd[-1].max()

    # the tokens engine's metrics are a Monte Carlo over 512 fixed evaluation prompts (the expectation over
    # w is exact), so at the tokens run's own final scores they match the exact closed form within 5 standard
    # errors sd_counts / sqrt(512), the per-prompt sd computed exactly from the count distribution
    s = St.scores[-1]
    a, _ = H.masses(s, counts, include_query)  # (K, M, K)
    idx = np.arange(K)
    f = 0.5 * ((1 - a[idx, :, idx]) ** 2 + (a**2).sum(-1) - a[idx, :, idx] ** 2)  # (K, M)
    mean_f = f @ w
    se_f = np.sqrt(((f - mean_f[:, None]) ** 2) @ w / 512)
    assert np.all(np.abs(St.feature_loss[-1] - mean_f) <= 5 * se_f + 1e-12), (St.feature_loss[-1], mean_f, se_f)
    mean_a = np.einsum("kim,i->km", a, w)
    se_a = np.sqrt(np.einsum("kim,i->km", (a - mean_a[:, None, :]) ** 2, w) / 512)
    assert np.all(np.abs(St.attention[-1] - mean_a) <= 5 * se_a + 1e-12)
    np.testing.assert_allclose(St.loss, St.feature_loss @ p, rtol=1e-12)
