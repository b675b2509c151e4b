"""Beyond the paper: does the stage-wise picture survive each relaxation of its assumptions?

For the imbalanced setting (K = plan.robust_K, N = plan.robust_N, p_1 = plan.p1) each relaxation runs alone
(docs/relaxations.md): the literal transformer with full parameters, random initialisations, other
optimizers, two heads, linear and ReLU attention, token noise; non-orthogonal features, label noise and
anisotropic tasks with the exact population formulas. Measured, not expected: whether the dominant feature
still reaches eps first, how many of the minor feature's four phases (spec section 6) are non-empty (a phase
not reached or of zero length is not counted), and both times to eps against the paper's model. Two sweeps,
over model.init_scale and data.label_noise, show where the picture breaks. Stochastic engines (transformer)
carry sampling noise: their times are read off persistent crossings (phases.py).
"""

from __future__ import annotations

from typing import Any

from ..config import with_overrides
from ..data import feature_probs
from ..engines import build_engine
from ..phases import detect_phases, loss_crossing
from ..schedule import log_schedule
from ..sweeps import expand, parse_spec
from ..trainer import run_training, structure, train_batched

TRANSFORMER = {"train.engine": "transformer", "train.expectation": "monte_carlo"}
CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("the paper's model (population, exact)", {}),
    ("literal transformer, the paper's parameters", TRANSFORMER),
    ("full parameters W^KQ, W^PV (init 0.01)", {**TRANSFORMER, "model.params": "full", "model.init_scale": 0.01}),
    ("random init of Q, scale 0.3", {**TRANSFORMER, "model.init_scale": 0.3}),
    ("random init of Q, scale 1", {**TRANSFORMER, "model.init_scale": 1.0}),
    ("SGD with momentum 0.9", {"train.optimizer": "sgd_momentum", "train.optimizer_args": {"momentum": 0.9},
                               "train.lr": 0.1}),
    ("Adam (lr 0.01)", {"train.optimizer": "adam", "train.lr": 0.01}),
    ("AdamW (lr 0.01)", {"train.optimizer": "adamw", "train.lr": 0.01}),
    ("two heads", {**TRANSFORMER, "model.heads": 2}),
    ("linear attention", {"train.expectation": "enumerate", "model.attention": "linear", "data.prompt_length": 12}),
    ("ReLU attention", {"train.expectation": "enumerate", "model.attention": "relu", "data.prompt_length": 12}),
    ("non-orthogonal features, coherence 0.2", {"data.features": "gram", "gram": 0.2}),
    ("non-orthogonal features, coherence 0.5", {"data.features": "gram", "gram": 0.5}),
    ("label noise 0.5", {"data.label_noise": 0.5}),
    ("label noise 2", {"data.label_noise": 2.0}),
    ("anisotropic tasks (eigenvalues 1/k)", {"task_cov": True}),
    ("token noise 0.1", {**TRANSFORMER, "data.token_noise": 0.1}),
)
QUICK_CASES = (0, 6, 13)  # population-engine cases: --quick stays quick


def _overrides(K: int, case: dict[str, Any]) -> dict[str, Any]:
    case = dict(case)
    if "gram" in case:  # equal off-diagonal coherence c: G = (1 - c) I + c 1 1^T, positive definite for c < 1
        c = case.pop("gram")
        case["data.feature_gram"] = [[1.0 if i == j else c for j in range(K)] for i in range(K)]
    if case.pop("task_cov", False):
        case["data.task_cov"] = [1.0 / (k + 1) for k in range(K)]
    return case


def measure(traj, probs, eps: float) -> dict[str, Any]:
    """Dominant first, the minor feature's non-empty phases, and both times to eps (None: not reached)."""
    dom = loss_crossing(traj.steps, traj.feature_loss[:, 0], eps)
    minor = loss_crossing(traj.steps, traj.feature_loss[:, 1], eps)
    ph = detect_phases(traj, probs, eps, "imbalanced")["features"][1]["phases"]
    nonempty = sum(p["end"] is not None and p["start"] is not None and p["end"] > p["start"] for p in ph)
    return {"dominant_first": dom is not None and (minor is None or dom < minor), "minor_phases": nonempty,
            "dominant_time": dom, "minor_time": minor,
            "curve": {"steps": traj.steps.tolist(), "loss": traj.feature_loss[:, 1].tolist()}}


def run(plan, prog) -> dict[str, Any]:
    """Every case of the plan, then the two sweeps. Times in GD steps; ratios against the paper's model."""
    K, N = plan.robust_K, plan.robust_N
    base = {"data.num_features": K, "data.prompt_length": N, "data.dominant_prob": plan.p1, "eps": plan.eps,
            "train.steps": plan.robust_steps, "train.batch_size": 128, "train.eval_prompts": 128}
    from ..config import RunConfig

    root = with_overrides(RunConfig(), base)
    cases = [CASES[i] for i in (QUICK_CASES if plan.name == "quick" else range(len(CASES)))]
    rows = []
    for name, case in cases:
        cfg = with_overrides(root, _overrides(K, case))
        prog.describe(f"robustness: {name}")
        res = run_training(cfg, progress=False)
        prog.advance()
        rows.append({"relaxation": name, "engine": f"{cfg.train.engine} / {cfg.train.expectation}",
                     **measure(res.trajectory, feature_probs(cfg.data), cfg.eps)})
    paper = rows[0]
    for r in rows:
        for t in ("dominant", "minor"):
            r[f"{t}_ratio"] = (None if r[f"{t}_time"] is None or paper[f"{t}_time"] is None
                               else r[f"{t}_time"] / paper[f"{t}_time"])
    return {"K": K, "N": N, "p1": plan.p1, "steps": plan.robust_steps, "rows": rows,
            "sweeps": {"model.init_scale": _sweep(root, {**TRANSFORMER}, "model.init_scale", plan.robust_init, prog),
                       "data.label_noise": _sweep(root, {}, "data.label_noise", plan.robust_noise, prog)}}


def _sweep(root, fixed: dict, key: str, values, prog) -> dict[str, Any]:
    """One vmapped batch (the sweep machinery) over ``key``; the minor time to eps and its phases per value."""
    tree = {**{k: v for k, v in _flat(root).items()}, **fixed}
    cfgs = [r.config for r in expand(parse_spec({"base": tree, "grid": {key: list(values)}}))]
    prog.describe(f"robustness: sweep over {key}")
    engines, schedule = [build_engine(c) for c in cfgs], log_schedule(cfgs[0].train.steps)
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(engines):  # an off relaxation (0) takes the paper's code path: its own batch
        groups.setdefault(structure(e, schedule), []).append(i)
    results: list = [None] * len(cfgs)
    for idx in groups.values():
        for i, r in zip(idx, train_batched([engines[i] for i in idx], schedule)):
            results[i] = r
    prog.advance()
    out = [measure(r.trajectory, feature_probs(c.data), c.eps) for c, r in zip(cfgs, results)]
    return {"x": list(values), "minor_time": [m["minor_time"] for m in out],
            "minor_phases": [m["minor_phases"] for m in out], "dominant_first": [m["dominant_first"] for m in out]}


def _flat(cfg) -> dict[str, Any]:
    from ..config import flatten

    return {k: v for k, v in flatten(cfg.to_dict()).items() if v is not None}


def count(plan) -> int:
    return (len(QUICK_CASES) if plan.name == "quick" else len(CASES)) + 2
