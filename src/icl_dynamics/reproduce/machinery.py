"""How ``reproduce`` trains its sweeps: dense geometric schedules, padding to a few compiled shapes,
runs through :func:`trainer.train_batched`, and rerunning members that have not yet reached
their events.

Compiling ``trainer.advance`` costs far more than a mean-field run, and it compiles once per shape. So a
sweep run with K features is run padded to a fixed size K' >= K (``Plan.shapes``): features K+1..K' get
probability 0, hence no prompt tokens and no weight in the loss, and their rows and columns never move.
The first K rows and columns then follow exactly the K-feature dynamics (bit for bit; a test checks it) and
are sliced back out. Exact count tables of different N are padded the same way, with zero-weight rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, get_args

import numpy as np

from ..config import RunConfig, TrainConfig, with_overrides
from ..data import feature_probs
from ..engines import Engine, build_engine
from ..measures import fit_power_law
from ..sweeps import expand, parse_spec
from ..trainer import train_batched
from ..phases import crossing, loss_crossing
from ..trajectory import Trajectory
from .orders import time_uncertainty

MAX_DOUBLINGS = 4
LOG_RATIO = 1.01  # consecutive logged steps of a sweep run differ by at most 1 %
DEFAULT_EXPECTATION = RunConfig().train.expectation
# every count vector summed over: 'enumerate' where the config has it ('exact' is then a closed form)
ENUMERATE = "enumerate" if "enumerate" in get_args(TrainConfig.model_fields["expectation"].annotation) else "exact"


def geometric_schedule(steps: int, ratio: float = LOG_RATIO) -> np.ndarray:
    """0 and every step of a geometric grid up to ``steps`` (all small steps are logged)."""
    n = int(math.ceil(math.log(max(steps, 2)) / math.log(ratio))) + 1
    return np.unique(np.concatenate([[0, steps], np.rint(np.geomspace(1, steps, n))]).astype(np.int64))


def fit_power(x, y, level: float = 0.95) -> dict[str, Any] | None:
    """:func:`measures.fit_power_law` as results.json stores it; None with fewer than 3 usable points."""
    f = fit_power_law(x, [np.nan if v is None else v for v in y], level, min_points=3)
    return None if f is None else f.to_json()


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


def pad_table(engine: Engine, rows: int) -> Engine:
    """An enumerating engine with its count table padded to ``rows`` by zero-weight copies of its first
    row (they add 0 to every expectation), so tables of different N share one compiled shape."""
    table = engine.consts.table
    extra = rows - table.counts.shape[0]
    if extra <= 0:
        return engine
    counts = np.concatenate([np.asarray(table.counts), np.repeat(np.asarray(table.counts)[:1], extra, 0)])
    weights = np.concatenate([np.asarray(table.weights), np.zeros(extra)])
    return engine._replace(consts=engine.consts._replace(table=table._replace(counts=counts, weights=weights)))


class Item(NamedTuple):
    """One sweep member: its config, a first guess of the steps it needs, and what to read off its
    trajectory (a dict of measurements, None where not reached)."""

    config: RunConfig
    steps: int
    read: Callable[[Trajectory], dict[str, Any]]


def _complete(m: dict[str, Any]) -> bool:
    return all(v is not None for v in m.values() for v in (v if isinstance(v, list) else [v]))


def build_engines(items: list[Item], shapes: tuple[int, ...]) -> list[Engine]:
    """Engines padded to the smallest of ``shapes`` that fits; exact tables padded to a common length."""
    engines = [build_engine(padded(it.config, min([s for s in shapes if s >= it.config.data.num_features],
                                                   default=it.config.data.num_features))) for it in items]
    exact = [i for i, (it, e) in enumerate(zip(items, engines))
             if it.config.train.expectation == ENUMERATE and getattr(e.consts, "table", None) is not None]
    if exact:
        rows = max(engines[i].consts.table.counts.shape[0] for i in exact)
        for i in exact:
            engines[i] = pad_table(engines[i], rows)
    return engines


def measure(items: list[Item], shapes: tuple[int, ...], prog: "Progress", label: str,
            retry: bool = True) -> list[dict[str, Any]]:
    """Train every item and read its trajectory, doubling the steps of the items not yet complete (up to
    ``MAX_DOUBLINGS`` times, unless ``retry`` is off or they diverged). Each result holds the read values,
    the steps run, the status and the trajectory.

    Items train one by one through :func:`trainer.train_batched`: a vmapped batch compiles once per batch
    size, and on a few cores one compilation costs more than all of these short runs."""
    if not items:
        return []
    engines = build_engines(items, shapes)
    out: list[dict[str, Any]] = []
    for it, engine in zip(items, engines):
        prog.describe(label)
        steps = it.steps
        for attempt in range(MAX_DOUBLINGS + 1):
            res = train_batched([engine], geometric_schedule(steps))[0]
            traj = unpad(res.trajectory, it.config.data.num_features)
            m = it.read(traj)
            if _complete(m) or not retry or res.status == "diverged" or attempt == MAX_DOUBLINGS:
                break
            steps *= 2
        out.append({**m, "steps": int(traj.steps[-1]), "status": res.status, "trajectory": traj})
        prog.advance()
    return out


def sweep_configs(base: dict[str, Any], grid: dict[str, list]) -> list[RunConfig]:
    """The run configs of a sweep spec (``base`` + ``grid``, dotted keys), as ``icl-dynamics sweep``
    expands them."""
    return [run.config for run in expand(parse_spec({"base": base, "grid": grid}))]


class Progress:
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


def base_tree(plan, **dotted: Any) -> dict[str, Any]:
    """The sweep base (dotted keys) around the plan's defaults; ``a__b=v`` sets ``a.b``."""
    tree = {"data.num_features": plan.K, "data.prompt_length": plan.N, "data.dominant_prob": plan.p1,
            "train.lr": plan.lr, "eps": plan.eps, "train.expectation": "mean_field"}
    tree.update({k.replace("__", "."): v for k, v in dotted.items()})
    return tree


def base_config(plan, **dotted: Any) -> RunConfig:
    return with_overrides(RunConfig(), base_tree(plan, **dotted))


def _median(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.median(values))


def timed(traj: Trajectory, t: float | None, name: str) -> dict[str, Any]:
    return {name: t, f"{name}_u": time_uncertainty(traj.steps, t)}


def balanced_times(traj: Trajectory, eps_values) -> dict[str, Any]:
    """End of Phase I (attention[k,k] >= 1/2) and time to each eps, medians over features, with +-."""
    K = traj.feature_loss.shape[1]
    t1 = _median([crossing(traj.steps, traj.attention[:, k, k], 0.5, 0.05) for k in range(K)])
    te = [_median([loss_crossing(traj.steps, traj.feature_loss[:, k], e) for k in range(K)]) for e in eps_values]
    return {**timed(traj, t1, "phase1"), "time_to_eps": te,
            "time_to_eps_u": [time_uncertainty(traj.steps, t) for t in te]}


def dominant_time(traj: Trajectory, eps: float) -> dict[str, Any]:
    return timed(traj, loss_crossing(traj.steps, traj.feature_loss[:, 0], eps), "dominant")


def estimate(K: int, lr: float, eps: float, p_min: float) -> int:
    """A first guess of the steps a run needs (rough fits of the orders; ``measure`` extends it)."""
    return int(3 * (1.5 * K * K + 0.4 * K / eps) / lr + 4 / (p_min * lr))
