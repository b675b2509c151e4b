"""How one GD step's cost grows: population against N, d (flat by construction) and K (measured exponent);
tokens against N, d and batch."""

from __future__ import annotations

from common import engine, power_fit, step_call, timed


def step_time(repeats: int, **kw) -> float:
    return timed(step_call(engine(**kw)), repeats)["median_s"]


def series(name: str, values, repeats: int, key: str, fixed: dict, tie_dim: bool = False) -> dict:
    times = []
    for v in values:
        kw = {**fixed, key: v}
        if tie_dim and key == "data__num_features":
            kw["data__dim"] = v
        times.append(step_time(repeats, **kw))
    fit = power_fit(values, times)
    return {"name": name, "param": key.split("__")[-1], "values": list(values), "step_s": times,
            "exponent": fit["exponent"], "max_over_min": max(times) / min(times)}


def run(plan) -> dict:
    r = plan.repeats
    pop = []
    for exp in ("mean_field", "monte_carlo"):
        base = {"train__expectation": exp}
        pop.append(series(f"population {exp} vs N", plan.growth_N, r, "data__prompt_length", base))
        pop.append(series(f"population {exp} vs d", plan.growth_d, r, "data__dim", base))
        pop.append(series(f"population {exp} vs K", plan.growth_K, r, "data__num_features", base, tie_dim=True))
    tok = {"train__engine": "tokens", "train__batch_size": plan.growth_tok_batch}
    toks = [series("tokens vs N", plan.growth_tok_N, r, "data__prompt_length", tok),
            series("tokens vs d", plan.growth_d, r, "data__dim", tok),
            series("tokens vs batch", plan.growth_tok_B, r, "train__batch_size", tok)]
    return {"population": pop, "tokens": toks}
