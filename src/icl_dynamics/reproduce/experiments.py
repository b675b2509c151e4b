"""The experiments behind ``reproduce``: two default runs, mean-field sweeps, and log-log fits.

The sweeps are sweep specs (``base`` + ``grid``), expanded by :func:`sweeps.expand` and trained by
:func:`trainer.train_batched`, the one vmapped path.

Everything runs on the population engine:

- the two main runs (balanced, imbalanced) use the config defaults (K = 16, N = 256, lr = 1, eps = 1e-2)
  with the Monte Carlo expectation over prompt counts (finite N; mean field under ``--quick``), and are
  written as run directories;
- the sweeps use the mean-field expectation (the large-N limit, deterministic and cheap). Each sweep
  member is one long run on a dense geometric log schedule; all times are read off its trajectory
  (several eps from one run), with crossings interpolated between logged steps. A member that has not
  reached its events is rerun with twice the steps (up to ``MAX_DOUBLINGS`` times).

Compiling ``trainer.advance`` costs far more than a mean-field run, and it compiles once per shape. So a
sweep run with K features is run padded to a fixed size K' >= K (``Plan.shapes``): features K+1..K' get
probability 0, hence no prompt tokens and no weight in the loss, and their rows and columns never move.
The first K rows and columns then follow exactly the K-feature dynamics (bit for bit; a test checks it) and
are sliced back out. With the main runs at K = 16, ``reproduce --quick`` compiles once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..config import RunConfig, with_overrides
from ..data import feature_probs, setting_name
from ..engines import build_engine
from ..measures import fit_power_law
from ..phases import crossing, detect_phases, loss_crossing
from ..progress import progress_bar
from ..runner import execute
from ..storage import load_run
from ..sweeps import expand, parse_spec
from ..trainer import structure, train_batched
from ..trajectory import Trajectory

MAX_DOUBLINGS = 4
LOG_RATIO = 1.01  # consecutive logged steps of a sweep run differ by at most 1 %
SPEC_TABLE = {  # spec section 6: K = 16, p_1 = 0.5, lr = 1, eps = 1e-2, mean field
    "dominant: feature_loss <= eps": 73,
    "minor: B_{k,n} peaks": 261,
    "minor: attention[k,k] > attention[k,1]": 537,
    "minor: attention[k,k] >= 1/2": 818,
    "minor: feature_loss <= eps": 1903,
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``reproduce`` runs. ``K``, ``N``, ``p1``, ``lr``, ``eps`` are the defaults of the main runs and
    the fixed values of the sweeps that do not vary them."""

    name: str
    K: int = 16
    N: int = 256
    p1: float = 0.5
    lr: float = 1.0
    eps: float = 1e-2
    main_expectation: str = "monte_carlo"
    count_samples: int = 4096  # the config default
    main_steps: tuple[int, int] = (2000, 3000)  # balanced, imbalanced
    sweep_K: int = 16  # K of the eps, lr and p_1 sweeps
    K_values: tuple[int, ...] = (4, 6, 8, 12, 16, 24, 32, 48)
    eps_values: tuple[float, ...] = tuple(float(x) for x in np.geomspace(1e-2, 1e-4, 9))
    lr_values: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    p1_values: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    shapes: tuple[int, ...] = (16, 48)  # padded sizes of the sweep runs (see the module doc)


FULL = Plan("full")
# --quick: the same pipeline with mean-field main runs, K <= 16 (one compilation) and eps down to 1e-3 only
QUICK = Plan("quick", main_expectation="mean_field", main_steps=(1500, 2500), sweep_K=8, K_values=(4, 6, 8, 12, 16),
             eps_values=tuple(float(x) for x in np.geomspace(1e-2, 1e-3, 5)), lr_values=(0.5, 1.0, 2.0, 4.0),
             p1_values=(0.3, 0.4, 0.5, 0.6, 0.7), shapes=(16,))


def base_config(plan: Plan, **dotted: Any) -> RunConfig:
    tree = {"data.num_features": plan.K, "data.prompt_length": plan.N, "data.dominant_prob": plan.p1,
            "train.lr": plan.lr, "eps": plan.eps, "train.expectation": "mean_field"}
    tree.update({k.replace("__", "."): v for k, v in dotted.items()})
    return with_overrides(RunConfig(), tree)


def geometric_schedule(steps: int, ratio: float = LOG_RATIO) -> np.ndarray:
    """0 and every step of a geometric grid up to ``steps`` (all small steps are logged)."""
    n = int(math.ceil(math.log(max(steps, 2)) / math.log(ratio))) + 1
    return np.unique(np.concatenate([[0, steps], np.rint(np.geomspace(1, steps, n))]).astype(np.int64))


def fit_power(x, y, level: float = 0.95) -> dict[str, Any] | None:
    """:func:`measures.fit_power_law` as results.json stores it; None with fewer than 3 usable points (no
    interval)."""
    f = fit_power_law(x, y, level, min_points=3)
    return None if f is None else f.to_json()


def _median(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) or not values else float(np.median(values))


def balanced_times(traj: Trajectory, eps_values) -> dict[str, Any]:
    """End of Phase I (attention[k,k] >= 1/2) and time to each eps, medians over features."""
    K = traj.feature_loss.shape[1]
    t1 = _median([crossing(traj.steps, traj.attention[:, k, k], 0.5, 0.05) for k in range(K)])
    teps = [_median([loss_crossing(traj.steps, traj.feature_loss[:, k], e) for k in range(K)]) for e in eps_values]
    return {"phase1": t1, "time_to_eps": teps}


def imbalanced_times(traj: Trajectory, eps: float) -> dict[str, Any]:
    """Dominant (feature 0) and minor (median over the others) time to eps."""
    K = traj.feature_loss.shape[1]
    return {"dominant": loss_crossing(traj.steps, traj.feature_loss[:, 0], eps),
            "minor": _median([loss_crossing(traj.steps, traj.feature_loss[:, k], eps) for k in range(1, K)])}


def _complete(m: dict[str, Any]) -> bool:
    return all(v is not None for v in m.values() for v in (v if isinstance(v, list) else [v]))


def padded(cfg: RunConfig, size: int) -> RunConfig:
    """``cfg`` with ``size - K`` extra features of probability 0 (see the module doc)."""
    K = cfg.data.num_features
    if size <= K:
        return cfg
    probs = [float(p) for p in feature_probs(cfg.data)] + [0.0] * (size - K)
    return with_overrides(cfg, {"data.num_features": size, "data.dim": size, "data.probs": probs})


def unpad(traj: Trajectory, K: int) -> Trajectory:
    return traj._replace(feature_loss=traj.feature_loss[:, :K], scores=traj.scores[:, :K, :K],
                         attention=traj.attention[:, :K, :K])


class Item(NamedTuple):
    """One sweep member: its config, a first guess of the steps it needs, and what to read off its
    trajectory (a dict of measurements, None where not reached)."""

    config: RunConfig
    steps: int
    read: Callable[[Trajectory], dict[str, Any]]


def measure(items: list[Item], shapes: tuple[int, ...], prog: "_Progress", label: str) -> list[dict[str, Any]]:
    """Train every item (padded to the smallest of ``shapes`` that fits) and read its trajectory, doubling
    the steps of the items not yet complete (up to ``MAX_DOUBLINGS`` times) unless they diverged. Items
    whose engines share a structure (shapes and schedule) train as one vmapped batch."""
    Ks = [it.config.data.num_features for it in items]
    engines = [build_engine(padded(it.config, min([s for s in shapes if s >= K], default=K)))
               for it, K in zip(items, Ks)]
    steps = [it.steps for it in items]
    out: list[dict[str, Any]] = [{} for _ in items]
    todo = list(range(len(items)))
    for attempt in range(MAX_DOUBLINGS + 1):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in todo:
            groups[structure(engines[i], geometric_schedule(steps[i]))].append(i)
        todo = []
        for idx in groups.values():
            prog.describe(f"{label} ({len(idx)} run{'s' if len(idx) > 1 else ''})")
            for i, res in zip(idx, train_batched([engines[i] for i in idx], geometric_schedule(steps[idx[0]]))):
                traj = unpad(res.trajectory, Ks[i])
                m = items[i].read(traj)
                out[i] = {**m, "steps": int(traj.steps[-1]), "status": res.status, "trajectory": traj}
                if _complete(m) or res.status == "diverged" or attempt == MAX_DOUBLINGS:
                    prog.advance()
                else:
                    steps[i] *= 2
                    todo.append(i)
        if not todo:
            break
    return out


def sweep_items(plan: Plan, grid: dict[str, list], read: Callable[[RunConfig], Callable[[Trajectory], dict]],
                eps: float | None = None, **base: Any) -> list[Item]:
    """The members of a mean-field sweep spec over ``grid`` (dotted keys) around the plan's defaults."""
    tree = {"data.num_features": plan.K, "data.prompt_length": plan.N, "data.dominant_prob": plan.p1,
            "train.lr": plan.lr, "eps": plan.eps, "train.expectation": "mean_field", **base}
    items = []
    for run in expand(parse_spec({"base": tree, "grid": grid})):
        cfg = run.config
        p = feature_probs(cfg.data)
        items.append(Item(cfg, _estimate(cfg.data.num_features, cfg.train.lr, eps or cfg.eps, float(p.min())),
                          read(cfg)))
    return items


def _estimate(K: int, lr: float, eps: float, p_min: float) -> int:
    """A first guess of the steps a run needs (rough fits of the orders; ``measure`` extends it)."""
    return int(3 * (1.5 * K * K + 0.4 * K / eps) / lr + 4 / (p_min * lr))


class _Progress:
    """One rich bar over all runs of ``reproduce``; the description names the current run or batch."""

    def __init__(self, bar, total: int):
        self.bar, self.task = bar, bar.add_task("reproduce", total=total)

    def describe(self, name: str) -> None:
        self.bar.update(self.task, description=f"reproduce: {name}")

    def advance(self) -> None:
        self.bar.advance(self.task)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.describe(name)
        out = fn()
        self.advance()
        return out


def _strip(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "trajectory"}


def main_runs(plan: Plan, out: Path, prog: _Progress) -> dict[str, Any]:
    runs = {}
    for name, probs, steps in (("balanced", "balanced", plan.main_steps[0]),
                               ("imbalanced", "imbalanced", plan.main_steps[1])):
        cfg = base_config(plan, data__probs=probs, train__expectation=plan.main_expectation,
                          train__count_samples=plan.count_samples, train__steps=steps)
        run_dir = out / "runs" / name
        prog.run(f"{name} run (K={plan.K}, {plan.main_expectation})",
                 lambda: execute(cfg, run_dir, overwrite=True, progress=False))
        run = load_run(run_dir)
        phases = detect_phases(run.trajectory, run.probs, cfg.eps, setting_name(cfg.data))  # = its phases.json
        runs[name] = {"run_dir": str(Path("runs") / name), "expectation": plan.main_expectation,
                      "count_samples": plan.count_samples if plan.main_expectation == "monte_carlo" else None,
                      "K": plan.K, "N": plan.N, "lr": plan.lr, "eps": plan.eps, "steps": steps,
                      "phases": phases}
    return runs


def sweeps(plan: Plan, prog: _Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean-field sweeps over K, eps, lr and p_1; also the spec section 6 check when K = 16 is swept."""
    def by_setting(cfg: RunConfig):
        if cfg.data.probs == "balanced":
            return lambda t: balanced_times(t, [cfg.eps])
        return lambda t: imbalanced_times(t, cfg.eps)

    sw: dict[str, Any] = {}
    spec = None
    items = sweep_items(plan, {"data.num_features": list(plan.K_values), "data.probs": ["balanced", "imbalanced"]},
                        by_setting)
    rows = measure(items, plan.shapes, prog, "K sweep")
    rows_b, rows_i = rows[0::2], rows[1::2]
    for K, m, it in zip(plan.K_values, rows_i, items[1::2]):
        if K == 16 and plan.p1 == 0.5 and plan.lr == 1.0 and plan.eps == 1e-2:
            spec = spec_check(m["trajectory"], feature_probs(it.config.data), plan.eps)
    sw["K"] = {"expectation": "mean_field", "probs": "balanced and imbalanced", "x": list(plan.K_values),
               "phase1": [r["phase1"] for r in rows_b], "time_to_eps": [r["time_to_eps"][0] for r in rows_b],
               "dominant": [r["dominant"] for r in rows_i], "minor": [r["minor"] for r in rows_i],
               "steps": [max(a["steps"], b["steps"]) for a, b in zip(rows_b, rows_i)]}

    K = plan.sweep_K
    items = sweep_items(plan, {"data.probs": ["balanced"]}, lambda cfg: lambda t: balanced_times(t, plan.eps_values),
                        eps=min(plan.eps_values), **{"data.num_features": K})
    m = measure(items, plan.shapes, prog, f"eps sweep, balanced K={K}")[0]
    sw["eps"] = {"expectation": "mean_field", "probs": "balanced", "K": K, "x": list(plan.eps_values),
                 "phase1": m["phase1"], "time_to_eps": m["time_to_eps"],
                 "phase2": [None if t is None or m["phase1"] is None else t - m["phase1"] for t in m["time_to_eps"]],
                 "steps": m["steps"]}

    items = sweep_items(plan, {"train.lr": list(plan.lr_values)}, by_setting,
                        **{"data.num_features": K, "data.probs": "balanced"})
    rows = measure(items, plan.shapes, prog, "lr sweep")
    sw["lr"] = {"expectation": "mean_field", "probs": "balanced", "K": K, "x": list(plan.lr_values),
                "phase1": [r["phase1"] for r in rows], "time_to_eps": [r["time_to_eps"][0] for r in rows],
                "status": [r["status"] for r in rows], "steps": [r["steps"] for r in rows]}

    items = sweep_items(plan, {"data.dominant_prob": list(plan.p1_values)}, by_setting,
                        **{"data.num_features": K, "data.probs": "imbalanced"})
    rows = measure(items, plan.shapes, prog, "p1 sweep")
    sw["p1"] = {"expectation": "mean_field", "probs": "imbalanced", "K": K, "x": list(plan.p1_values),
                "p_minor": [(1 - p) / (K - 1) for p in plan.p1_values],
                "dominant": [r["dominant"] for r in rows], "minor": [r["minor"] for r in rows],
                "steps": [r["steps"] for r in rows]}
    return sw, spec


def spec_check(traj: Trajectory, probs: np.ndarray, eps: float) -> list[dict[str, Any]]:
    """Detected boundaries of the default imbalanced mean-field run against the spec section 6 table."""
    ph = detect_phases(traj, probs, eps, "imbalanced")
    dom = ph["features"][0]["phases"][0]["end"]
    minor = [int(np.median([f["phases"][j]["end"] for f in ph["features"][1:]]))
             if all(f["phases"][j]["end"] is not None for f in ph["features"][1:]) else None for j in range(4)]
    rows = []
    for (event, want), got in zip(SPEC_TABLE.items(), [dom, *minor]):
        rows.append({"event": event, "spec": want, "measured": got,
                     "rel_error": None if got is None else abs(got - want) / want})
    return rows


def fits(sw: dict[str, Any]) -> dict[str, Any]:
    K, e, lr, p = sw["K"], sw["eps"], sw["lr"], sw["p1"]
    return {
        "phase1_vs_K": fit_power(K["x"], _nan(K["phase1"])),
        "time_vs_K": fit_power(K["x"], _nan(K["time_to_eps"])),
        "phase2_vs_eps": fit_power(e["x"], _nan(e["phase2"])),
        "time_vs_lr": fit_power(lr["x"], _nan(lr["time_to_eps"])),
        "dominant_vs_K": fit_power(K["x"], _nan(K["dominant"])),
        "minor_vs_K": fit_power(K["x"], _nan(K["minor"])),
        "minor_vs_pminor": fit_power(p["p_minor"], _nan(p["minor"])),
    }


def _nan(values: list[float | None]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def run_all(plan: Plan, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Every experiment of ``plan``; main runs go to ``out/runs``. Returns JSON-ready results."""
    started = time.time()
    n_runs = 2 + 2 * len(plan.K_values) + 1 + len(plan.lr_values) + len(plan.p1_values)
    with progress_bar(progress) as bar:
        prog = _Progress(bar, n_runs)
        main = main_runs(plan, out, prog)
        sw, spec = sweeps(plan, prog)
    return {"plan": dataclasses.asdict(plan), "main": main, "sweeps": sw, "fits": fits(sw), "spec_check": spec,
            "wall_time_s": time.time() - started}
