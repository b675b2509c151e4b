"""Objectives: what GD minimises, and what is measured along the way.

An engine is plain data plus two pure functions, so the trainer can jit, scan and vmap it:

- ``init``: the trainable parameters at step 0 (a pytree)
- ``consts``: arrays the dynamics need (probabilities, count table, lr, keys...); values, not shapes, so
  changing them never recompiles
- ``static``: hashable options that fix shapes and code paths
- ``update(static, consts, params, step) -> params``: one GD step
- ``observe(static, consts, params) -> Metrics``: the tracked quantities

A new engine is one ``build(cfg) -> Engine`` function plus ``@register_engine``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from ..config import RunConfig


class Metrics(NamedTuple):
    """Tracked quantities at one step. loss (), feature_loss (K,), scores (K, K) with
    scores[k, n] = v_n^T Q v_k, attention (K, K) with attention[k, n] the expected mass of a feature-k
    query on feature-n tokens."""

    loss: jnp.ndarray
    feature_loss: jnp.ndarray
    scores: jnp.ndarray
    attention: jnp.ndarray


class Engine(NamedTuple):
    name: str
    static: Any
    consts: Any
    init: Any
    update: Callable
    observe: Callable


ENGINES: dict[str, Callable[[RunConfig], Engine]] = {}


def register_engine(name: str):
    def deco(fn: Callable[[RunConfig], Engine]):
        ENGINES[name] = fn
        return fn

    return deco


def build_engine(cfg: RunConfig) -> Engine:
    return ENGINES[cfg.train.engine](cfg)


from . import population, tokens  # noqa: E402,F401  (registration)
