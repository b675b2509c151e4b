"""Section ``cost_growth``: how one GD step's cost grows. Population against N, d (flat by construction)
and K (measured exponent); tokens against N, d and batch."""

from __future__ import annotations

from dataclasses import dataclass

import jax

from .common import engine, ms, power_fit, step_call, table, timed

NAME = "cost_growth"


@dataclass(frozen=True)
class Knobs:
    repeats: int = 7
    N: tuple = (64, 256, 1024, 4096)
    d: tuple = (16, 64, 256)
    K: tuple = (4, 8, 16, 32, 64)
    tok_batch: int = 64
    tok_N: tuple = (64, 256, 1024)
    tok_B: tuple = (16, 64, 256)


FULL = Knobs()
QUICK = Knobs(repeats=3, N=(64, 256), d=(16, 32), K=(4, 8), tok_batch=16, tok_N=(64, 128), tok_B=(8, 16))


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


def run(k: Knobs) -> dict:
    r = k.repeats
    with jax.enable_x64(True):
        pop = []
        for exp in ("mean_field", "monte_carlo"):
            base = {"train__expectation": exp}
            pop.append(series(f"population {exp} vs N", k.N, r, "data__prompt_length", base))
            pop.append(series(f"population {exp} vs d", k.d, r, "data__dim", base))
            pop.append(series(f"population {exp} vs K", k.K, r, "data__num_features", base, tie_dim=True))
        tok = {"train__engine": "tokens", "train__batch_size": k.tok_batch}
        toks = [series("tokens vs N", k.tok_N, r, "data__prompt_length", tok),
                series("tokens vs d", k.d, r, "data__dim", tok),
                series("tokens vs batch", k.tok_B, r, "train__batch_size", tok)]
    return {"population": pop, "tokens": toks}


def comparisons(r: dict) -> list[dict]:
    return []


def tables(r: dict) -> dict[str, str]:
    rows = [[s["name"], ", ".join(map(str, s["values"])), ", ".join(ms(x) for x in s["step_s"]),
             f"{s['exponent']:+.2f}"] for s in r["population"] + r["tokens"]]
    return {"growth": table(["series", "values", "step time (ms)", "exponent"], rows)}
