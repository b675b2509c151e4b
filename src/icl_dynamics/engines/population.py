"""Population objective (spec sections 4-5): exact GD on L in the K x K ``scores`` coordinates.

From Q = 0 the gradient stays in span{v_n v_k^T}, so GD on Q is exactly GD on scores; w is integrated out
in closed form. The expectation over prompt-token counts is ``train.expectation``:

- ``exact`` (default): the closed form of spec section 9 (closed_form.py), any N or prompt-length law, at
  a cost independent of N; features of equal probability are computed once, so they stay bit-for-bit equal;
- ``enumerate``: a weighted :class:`CountTable` of every count vector (small K and N; the cross-check);
- ``monte_carlo``: a table of sampled count vectors; ``mean_field``: the single vector n = N p.
The cost depends on K and the table size or quadrature nodes, never on d.

Relaxations with closed forms (spec section 8), each off by default (then the code path is the paper's):
``data.features`` other than orthonormal (G = V^T V of the V every engine draws from the seed: the update is
scores <- scores - lr G g G), ``data.task_cov`` (H = V^T Sigma_w V) and ``data.label_noise`` (sigma^2). The
per-feature loss becomes 1/2 E[(A - e_k)^T H (A - e_k) + sigma^2 sum_i a_i^2] with H = G when w is
isotropic; the closed form passes H and sigma^2 to closed_form.stats_kernel, the table paths take the
generic path of tables.py. On a table, ``grad`` and ``observe`` use tables.softmax_stats (matrix products)
whenever it is exact (:data:`tables.SPREAD_MAX`) and the generic per-entry path otherwise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..config import RunConfig
from ..data import CountTable, count_table, exact_table_size, feature_probs, features_of, gram_of, seed_key, task_gram
from ..registry import ENGINES
from . import Engine, EngineSpec, Metrics, training
from . import closed_form as cf
from .tables import SPREAD_MAX, _all, per_query, population_loss, softmax_stats  # noqa: F401 (re-exported)



class PopStatic(NamedTuple):
    include_query: bool
    attention: str
    expectation: str = "enumerate"
    nodes: int = 0  # quadrature nodes (exact)
    groups: cf.Classes | None = None  # classes of equal probability (exact)
    gram: bool = False  # non-orthonormal features: the update is G g G (consts.G)
    cov: bool = False  # a (K, K) loss matrix H (consts.H): non-orthonormal features or a task covariance
    noise: bool = False  # label noise (consts.sigma2)


class PopConsts(NamedTuple):
    probs: jnp.ndarray  # (K,)
    table: CountTable | None  # counts (M, K), weights (M,); None for exact
    law: cf.PromptLaw | None = None  # the prompt length's law; exact only
    G: jnp.ndarray | None = None  # (K, K) V^T V (static.gram)
    H: jnp.ndarray | None = None  # (K, K) V^T Sigma_w V (static.cov)
    sigma2: jnp.ndarray | None = None  # () label-noise variance (static.noise)


def _relaxed(static: PopStatic) -> bool:
    return static.cov or static.noise


def _matrix_path_ok(static: PopStatic, scores) -> jnp.ndarray:
    if static.attention != "softmax" or _relaxed(static):
        return jnp.asarray(False)
    spread = jnp.max(jnp.max(scores, axis=1) - jnp.min(scores, axis=1))
    return _all(spread <= SPREAD_MAX)


def _closed_form(static: PopStatic, c: PopConsts, scores) -> cf.Stats:
    if _relaxed(static):
        return cf.stats_kernel(scores, c.probs, c.law, c.H if static.cov else None,
                               c.sigma2 if static.noise else 0.0, include_query=static.include_query,
                               nodes=static.nodes, groups=static.groups)
    return cf.stats_kernel(scores, c.probs, c.law, include_query=static.include_query, nodes=static.nodes,
                           groups=static.groups)


def _loss_terms(static: PopStatic, c: PopConsts):
    """(H, sigma2) for the generic path: None where the relaxation is off."""
    return (c.H if static.cov else None), (c.sigma2 if static.noise else None)


def grad(static: PopStatic, c: PopConsts, scores, step):
    """The step direction in scores coordinates: dL/dscores (K, K), or G dL/dscores G for non-orthonormal
    features. GD on Q from 0 is exactly GD on scores with it (spec sections 5 and 8)."""
    g = _grad(static, c, scores)
    return c.G @ g @ c.G if static.gram else g


def _grad(static: PopStatic, c: PopConsts, scores):
    if static.expectation == "exact":
        return _closed_form(static, c, scores).grad
    def generic(s):
        return jax.grad(population_loss)(s, c.probs, c.table, static.include_query, static.attention,
                                         *_loss_terms(static, c))

    if static.attention != "softmax" or _relaxed(static):
        return generic(scores)
    return jax.lax.cond(_matrix_path_ok(static, scores),
                        lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[0], generic, scores)


def observe(static: PopStatic, c: PopConsts, scores) -> Metrics:
    def generic(s):
        return per_query(s, c.table, static.include_query, static.attention, *_loss_terms(static, c))

    if static.expectation == "exact":
        _, feature_loss, attention = _closed_form(static, c, scores)
    elif static.attention != "softmax" or _relaxed(static):
        feature_loss, attention = generic(scores)
    else:
        feature_loss, attention = jax.lax.cond(
            _matrix_path_ok(static, scores),
            lambda s: softmax_stats(s, c.probs, c.table, static.include_query)[1:], generic, scores)
    return Metrics(c.probs @ feature_loss, feature_loss, scores, attention)


SPREAD_MARGIN = 60.0  # score spread the quadrature is sized for beyond the start's; reported at the end


def prompt_law(cfg: RunConfig) -> cf.PromptLaw:
    """``data.prompt_length`` as a law: a fixed N, or {poisson: mean}, or {uniform: [lo, hi]}."""
    n = cfg.data.prompt_length
    if isinstance(n, int):
        return cf.fixed(n)
    if "poisson" in n:
        return cf.poisson(float(n["poisson"]))
    lo, hi = n["uniform"]
    return cf.uniform(lo, hi)


def quadrature_nodes(cfg: RunConfig) -> int:
    """``train.quadrature_nodes``, or the count that covers the initial spread plus SPREAD_MARGIN."""
    if cfg.train.quadrature_nodes is not None:
        return cfg.train.quadrature_nodes
    K = cfg.data.num_features
    return cf.choose_nodes(np.zeros((K, K)), feature_probs(cfg.data), prompt_law(cfg),
                           cfg.model.include_query_in_softmax, margin=SPREAD_MARGIN)


def relaxations(cfg: RunConfig) -> tuple[dict, dict]:
    """The static flags and consts of the relaxations that are on ({} and {} for the paper's data). G is
    V^T V of the V that every engine draws from the seed (data.features_of)."""
    d = cfg.data
    G = gram_of(d, features_of(d, cfg.seed)) if d.features != "orthonormal" else None
    H = task_gram(d, G)
    H = G if H is None else H
    flags, consts = {}, {}
    if G is not None:
        flags["gram"], consts["G"] = True, G
    if H is not None:
        flags["cov"], consts["H"] = True, H
    if d.label_noise > 0:
        flags["noise"], consts["sigma2"] = True, jnp.asarray(d.label_noise**2, jnp.float64)
    return flags, consts


def build(cfg: RunConfig) -> Engine:
    d, t = cfg.data, cfg.train
    probs = feature_probs(d)
    K = d.num_features
    flags, extra = relaxations(cfg)
    if t.expectation == "exact":
        consts = PopConsts(jnp.asarray(probs), None, prompt_law(cfg).as_f64(), **extra)
        static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention, "exact",
                           quadrature_nodes(cfg), cf.classes(probs), **flags)
    else:
        table = count_table(t.expectation, d.prompt_length, probs, key=seed_key(cfg.seed, "counts"),
                            samples=t.count_samples, max_exact=t.max_exact_table)
        consts = PopConsts(jnp.asarray(probs), table, **extra)
        static = PopStatic(cfg.model.include_query_in_softmax, cfg.model.attention, t.expectation, **flags)
    return Engine("population", static, consts, jnp.zeros((K, K), jnp.float64), grad, observe, *training(cfg))


def shape_key(cfg: RunConfig) -> tuple:
    """N, p, lr and the seed are values (in a mean-field or Monte Carlo table, or the closed form's law);
    an enumerated table's size depends on N (and on which count vectors have non-zero probability, which
    the sweep worker checks); the closed form's node count and prompt-length law kind are static."""
    d, t = cfg.data, cfg.train
    on = (d.features != "orthonormal", d.task_cov != "identity", d.label_noise > 0)
    relaxed = (("relaxations", *on),) if any(on) else ()  # the paper's data keeps its key
    if t.expectation == "exact":
        law = prompt_law(cfg)
        return (d.num_features, "exact", quadrature_nodes(cfg), law.kind, law.size,
                cf.classes(feature_probs(d)), *relaxed)
    size = {"enumerate": ("N", d.prompt_length), "monte_carlo": ("M", t.count_samples), "mean_field": ()}
    return (d.num_features, t.expectation, size[t.expectation], *relaxed)


def sizes(cfg: RunConfig) -> list[tuple[str, str, int]]:
    d, t = cfg.data, cfg.train
    K = d.num_features
    if t.expectation == "enumerate":
        return [("train.expectation", "enumerated table C(N+K-1, K-1) x K",
                 exact_table_size(d.prompt_length, K, t.max_exact_table) * K)]
    if t.expectation == "monte_carlo":
        return [("train.count_samples", "count_samples x K^2", t.count_samples * K * K)]
    if t.expectation == "exact":  # the general path's (rows, nodes, K) temporaries, 4 rows at a time
        return [("train.quadrature_nodes", "quadrature nodes x K x 4 rows x a few",
                 16 * (t.quadrature_nodes or 2048) * K)]
    return []


def report(engine: Engine, params) -> dict:
    """summary.json's ``engine`` entry: for the closed form, its quadrature and an error estimate at the
    final scores (the difference between the node count and half of it, which bounds the error)."""
    st, c = engine.static, engine.consts
    if st.expectation != "exact":
        return {"expectation": st.expectation}
    scores = np.asarray(params)
    law = c.law
    spread = float(np.max(np.max(scores, 1) - np.min(scores, 1)))
    H = np.asarray(c.H) if st.cov else None
    sigma2 = float(c.sigma2) if st.noise else 0.0
    return {"expectation": "exact", "quadrature_nodes": st.nodes,
            "spread_covered": cf.spread_limit(st.nodes, law, st.include_query), "final_spread": spread,
            "quadrature_error": cf.quadrature_error(scores, np.asarray(c.probs), law, st.include_query, st.nodes,
                                                    H, sigma2)}


def ignored(cfg: RunConfig) -> set[str]:
    """Keys that cannot change this engine's result: the tokens engine's sampling knobs, d (the dynamics live
    in the K x K scores), the knobs of the other expectations, N under mean field (n = N p: it cancels from
    every attention mass) and the seed where nothing is random."""
    t = cfg.train
    # random_unit features: G = V^T V depends on d and on the seed (orthonormal and gram features: G is fixed)
    random_features = cfg.data.features == "random_unit"
    out = {"train.batch_size", "train.eval_prompts"} | (set() if random_features else {"data.dim"})
    out |= {"train.count_samples"} if t.expectation != "monte_carlo" else set()
    out |= {"train.quadrature_nodes"} if t.expectation != "exact" else set()
    out |= {"train.max_exact_table"} if t.expectation != "enumerate" else set()
    out |= {"data.prompt_length"} if t.expectation == "mean_field" else set()
    out |= {"seed"} if t.expectation != "monte_carlo" and not random_features else set()
    return out


def general(engine: Engine) -> Engine:
    """Without the exact path's class grouping, which assumes parameters symmetric within classes."""
    return engine._replace(static=engine.static._replace(groups=None))


ENGINES.register("population")(EngineSpec(build, shape_key, sizes, report=report, ignored=ignored, general=general))

