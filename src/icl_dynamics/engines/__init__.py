"""Engines: what GD minimises, and what is measured along the way.

An engine is plain data plus two pure functions, so the trainer can jit, scan and vmap it:

- ``init``: the trainable parameters at step 0 (a pytree)
- ``consts``: arrays the dynamics need (probabilities, count table, lr, keys...); values, not shapes, so
  changing them never recompiles
- ``static``: hashable options that fix shapes and code paths
- ``grad(static, consts, params, step) -> grads``: the gradient the optimizer follows at ``step``
- ``observe(static, consts, params) -> Metrics``: the tracked quantities
- ``optimizer`` (an :class:`optim.Optimizer`, static) and ``lr`` (a traced scalar): how the trainer steps

A new engine is one module with a :class:`EngineSpec` registered in :data:`registry.ENGINES`; config,
sweeps and checkpoints learn everything they need from the spec, so nothing else changes::

    ENGINES.register("mine")(EngineSpec(build=build, shape_key=..., sizes=...))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from ..optim import Optimizer, optimizer_of
from ..registry import ENGINES
from ..trajectory import Metrics

if TYPE_CHECKING:  # the config sits below the engines; only its type is needed here
    from ..config import RunConfig

__all__ = ["Engine", "EngineSpec", "training", "Metrics", "ENGINES", "build_engine", "engine_spec", "rng_key_of"]


class Engine(NamedTuple):
    name: str
    static: Any
    consts: Any
    init: Any
    grad: Callable
    observe: Callable
    optimizer: Optimizer = Optimizer()
    lr: Any = 1.0


def training(cfg: "RunConfig") -> tuple[Optimizer, jax.Array]:
    """The (optimizer, lr) fields of an Engine, from ``train.optimizer``, ``optimizer_args`` and ``lr``."""
    t = cfg.train
    return optimizer_of(t.optimizer, t.optimizer_args), jax.numpy.asarray(t.lr, jax.numpy.float64)


def _no_key(consts: Any) -> None:
    return None


class EngineSpec(NamedTuple):
    """What an engine declares about itself.

    - ``build(cfg) -> Engine``
    - ``shape_key(cfg) -> tuple``: the config values that fix its array shapes and code paths; runs with
      equal keys can share one vmapped computation (sweeps batch by it)
    - ``sizes(cfg) -> [(config key, what, number of float64 elements)]``: its largest arrays, checked
      against the memory limit before anything is built
    - ``rng_key(consts) -> key or None``: where its random state lives (checkpoints save and verify it)
    - ``report(engine, final params) -> dict``: what summary.json records about the engine (accuracy
      estimates and the like)
    - ``ignored(cfg) -> set of config keys`` that cannot change its result (a sweep axis over one of them
      gives identical runs, and the sweep says so)
    - ``general(engine) -> Engine``: the engine without shortcuts that hold only along its own training
      (e.g. symmetry from its initial parameters), for evaluating arbitrary parameters
    """

    build: Callable[["RunConfig"], Engine]
    shape_key: Callable[["RunConfig"], tuple]
    sizes: Callable[["RunConfig"], list[tuple[str, str, int]]]
    rng_key: Callable[[Any], Any] = _no_key
    report: Callable[[Engine, Any], dict] = lambda engine, params: {}
    ignored: Callable[["RunConfig"], set] = lambda cfg: set()
    general: Callable[[Engine], Engine] = lambda engine: engine


def engine_spec(name: str) -> EngineSpec:
    return ENGINES[name]


def build_engine(cfg: "RunConfig") -> Engine:
    """The engine ``cfg.train.engine``, built in float64 whatever the caller's JAX default."""
    with jax.enable_x64(True):
        return engine_spec(cfg.train.engine).build(cfg)


def rng_key_of(engine: Engine) -> np.ndarray:
    """The engine's random key as raw uint32 data, empty for a deterministic engine."""
    key = engine_spec(engine.name).rng_key(engine.consts)
    if key is None:
        return np.zeros((0,), np.uint32)
    if jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


from . import population, tokens, transformer  # noqa: E402,F401  (built-in registrations)
