"""The negative controls that need runs of their own: settings in which a claim is false (claims.py says
why for each). Controls that perturb a measurement (a law put in place of measured times, features
relabelled) are computed from the results in claims.py and need no run.

Every control here is a short mean-field run, except ``balanced_N16``: at N = 16 the mean field has no
finite-N floor, so it takes the Monte Carlo expectation; its loss stays near 0.2, twenty times eps, so no
Monte Carlo noise can change its verdict.
"""

from __future__ import annotations

from typing import Any

from .claims import four_phase_input, one_phase_input, two_phase_input
from ..data import feature_probs
from .machinery import Item, Progress, base_config, base_tree, dominant_time, measure, sweep_configs

SINGLE = {  # name: (config overrides, steps, input builder, label)
    "balanced_K2": ({"data__probs": "balanced", "data__num_features": 2}, 300, "two", "balanced K = 2 (mean field)"),
    "balanced_N16": ({"data__probs": "balanced", "data__num_features": 16, "data__prompt_length": 16,
                      "train__expectation": "monte_carlo", "train__count_samples": 1024}, 1500, "two",
                     "balanced K = 16, N = 16 (Monte Carlo)"),
    "dominant_p01": ({"data__probs": "imbalanced", "data__num_features": 16, "data__dominant_prob": 0.1}, 1500, "one",
                     "imbalanced K = 16, p_1 = 0.1 (mean field)"),
    "minor_p02": ({"data__probs": "imbalanced", "data__num_features": 16, "data__dominant_prob": 0.2}, 3000, "four",
                  "imbalanced K = 16, p_1 = 0.2 (mean field)"),
}


def count(plan) -> int:
    return len(SINGLE) + len(plan.K_dominant)


def run(plan, prog: Progress) -> dict[str, Any]:
    """The control measurements, by control name."""
    cfgs = {name: base_config(plan, **over) for name, (over, *_) in SINGLE.items()}
    items = [Item(cfgs[name], steps, lambda t: {}) for name, (_, steps, *_) in SINGLE.items()]
    rows = measure(items, plan.shapes, prog, "controls", retry=False)
    out: dict[str, Any] = {}
    for (name, (_, _, kind, label)), r in zip(SINGLE.items(), rows):
        t, cfg = r["trajectory"], cfgs[name]
        if kind == "two":
            out[name] = two_phase_input(t, cfg.eps, label)
        elif kind == "one":
            out[name] = one_phase_input(t, cfg.eps, label)
        else:
            out[name] = four_phase_input(t, feature_probs(cfg.data), cfg.eps, label)

    # the dominant time against K with p_1 = 2/K: one sweep spec per K, as p_1 moves with K
    cfgs = [sweep_configs(base_tree(plan, data__probs="imbalanced", data__num_features=K),
                          {"data.dominant_prob": [2 / K]})[0] for K in plan.K_dominant]
    items = [Item(c, 2 * c.data.num_features ** 2 + 200, lambda t, e=c.eps: dominant_time(t, e)) for c in cfgs]
    rows = measure(items, plan.shapes, prog, "control: p_1 = 2/K")
    out["dominant_p1_2_over_K"] = {"x": list(plan.K_dominant), "t": [r["dominant"] for r in rows],
                                   "u": [r["dominant_u"] for r in rows], "p1": [2 / K for K in plan.K_dominant]}
    return out
