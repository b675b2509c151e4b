"""icl-dynamics: in-context learning dynamics of one-layer softmax transformers.

Data flows config -> data -> model -> engines -> trainer -> measures / phases -> storage -> plots, with
sweeps/ and reproduce/ above. Dynamics run in float64, explicitly where they run: importing the package
leaves the caller's JAX defaults (float32 unless they chose otherwise) untouched.

The names below are imported on first use (PEP 562), so ``import icl_dynamics`` and the CLI's start are
fast, and a Ctrl-C during start-up meets the CLI's handler instead of an import.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config", "load_config": "config", "with_overrides": "config",
    "Engine": "engines", "EngineSpec": "engines", "build_engine": "engines",
    "ATTENTION": "registry", "DISTRIBUTIONS": "registry", "ENGINES": "registry", "OPTIMIZERS": "registry",
    "execute": "runner", "resume": "runner",
    "load_run": "storage",
    "load_sweep": "api", "run_sweep": "sweeps",
    "run_training": "trainer", "train_engine": "trainer", "train_batched": "trainer",
    "Metrics": "trajectory", "Trajectory": "trajectory",
    "train": "api", "load": "api", "sweep": "api", "Run": "api", "Sweep": "api", "api": None,
}
_RENAMED = {"train_engine": "train"}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'icl_dynamics' has no attribute {name!r}")
    if _EXPORTS[name] is None:  # a submodule
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
