"""Shared helpers of the benchmark suite: configs, one compiled GD step, timing, fits, the machine, and the
markdown cells the report writes."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np
import optax

from icl_dynamics import trainer
from icl_dynamics.config import RunConfig, with_overrides
from icl_dynamics.engines import Engine, build_engine


# The suite's population engine is the Monte Carlo one (M = train.count_samples), whatever the package's
# default expectation: its sections measure how cost and error scale with M.
BASE = {"train.expectation": "monte_carlo"}


def config(**dotted: Any) -> RunConfig:
    """The default config (imbalanced, K = 16, N = 256, lr = 1) with :data:`BASE` and dotted overrides,
    written with ``__`` for dots: ``config(train__engine="tokens")``."""
    return with_overrides(RunConfig(), {**BASE, **{k.replace("__", "."): v for k, v in dotted.items()}})


def engine(**dotted: Any) -> Engine:
    return build_engine(config(**dotted))


@partial(jax.jit, static_argnums=(0, 1, 2))
def _step(grad, optimizer, static, consts, lr, state, step):
    # what one iteration of trainer.scan_rows does, without its finiteness check and logging
    params, opt_state = state
    updates, opt_state = optimizer.transform(lr).update(grad(static, consts, params, step), opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@partial(jax.jit, static_argnums=(0, 1))
def _observe(observe, static, consts, params):
    return observe(static, consts, params)


def step_call(e: Engine, step: int = 3) -> Callable[[], Any]:
    """One optimizer step of engine ``e`` from its initial state, compiled once per (code, static, shapes).
    Call it under ``jax.enable_x64(True)``, as the sections do."""
    state = trainer.initial_state(e)
    return lambda: _step(e.grad, e.optimizer, e.static, e.consts, e.lr, state, step)


def observe_call(e: Engine) -> Callable[[], Any]:
    return lambda: _observe(e.observe, e.static, e.consts, e.init)


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Call ``fn`` once as a warm-up (compilation included), then ``repeats`` times.

    Returns median_s (of the timed calls), first_s (the warm-up call) and compile_s = first_s - median_s,
    the one-off cost of tracing and compiling. Results are blocked on, so device time is counted.
    """
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"median_s": med, "first_s": first, "compile_s": max(first - med, 0.0), "repeats": repeats,
            "min_s": min(ts), "max_s": max(ts)}


def power_fit(x, y) -> dict[str, float]:
    """Least-squares fit of log y = log c + e log x: {'exponent': e, 'coef': c}."""
    e, logc = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return {"exponent": float(e), "coef": float(np.exp(logc))}


def machine() -> dict[str, Any]:
    """What ran the benchmark: JAX's devices, the CPU, versions, and the load (others may share it)."""
    import jaxlib

    info: dict[str, Any] = {
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_backend": jax.default_backend(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "load_avg_start": list(os.getloadavg()),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


# --- markdown, for the generated tables of docs/performance.md ---

def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sec(x: float) -> str:
    return f"{x:.3g} s" if x < 1000 else f"{x:.0f} s"


def ms(x: float) -> str:
    return f"{x * 1e3:.3g}"


def times(x: float) -> str:
    return f"{x:.3g}x"


def pct(x: float) -> str:
    return f"{x * 100:.2g}%" if x < 0.1 else f"{x * 100:.0f}%"


def comparison(name: str, ours: float, other: float, goal: float | None = None, note: str = "") -> dict:
    """A headline row: ours, the other, ratio = other / ours (> 1: we are faster), the goal if any."""
    ratio = other / ours
    return {"name": name, "ours_s": ours, "other_s": other, "ratio": ratio, "goal": goal,
            "met": None if goal is None else ratio >= goal, "note": note}
