"""Shared helpers of the benchmark suite: timing, configs, fits, machine description."""

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

import icl_dynamics  # noqa: F401  (enables float64)
from icl_dynamics.config import RunConfig, with_overrides
from icl_dynamics.engines import Engine, build_engine


def config(**dotted: Any) -> RunConfig:
    """The default config (imbalanced, K = 16, N = 256, lr = 1, 2000 steps) with dotted overrides,
    written with ``__`` for dots: ``config(train__engine="tokens")``."""
    return with_overrides(RunConfig(), {k.replace("__", "."): v for k, v in dotted.items()})


def engine(**dotted: Any) -> Engine:
    return build_engine(config(**dotted))


@partial(jax.jit, static_argnums=(0, 1))
def _update(update, static, consts, params):
    return update(static, consts, params, 3)


@partial(jax.jit, static_argnums=(0, 1))
def _observe(observe, static, consts, params):
    return observe(static, consts, params)


def step_call(e: Engine) -> Callable[[], Any]:
    """One GD step of engine ``e`` from its init, compiled once per (engine code, static, shapes)."""
    return lambda: _update(e.update, e.static, e.consts, e.init)


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
