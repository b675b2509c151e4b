"""Optimizers: optax gradient transformations, named in the config (``train.optimizer``) with their
hyperparameters (``train.optimizer_args``).

An :class:`Optimizer` is a value (hashable, so jit treats it as a compile-time constant); the learning rate
stays a traced array, so sweeps over lr share one compiled computation. A new optimizer is one function
``(lr, **args) -> optax.GradientTransformation`` plus ``@OPTIMIZERS.register(name)``.
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import optax

from .registry import OPTIMIZERS


@OPTIMIZERS.register("gd")
def gd(lr):
    """Plain (full-batch or stochastic) gradient descent: params - lr * grad, the paper's dynamics."""
    return optax.sgd(lr)


@OPTIMIZERS.register("sgd_momentum")
def sgd_momentum(lr, momentum: float = 0.9, nesterov: bool = False):
    return optax.sgd(lr, momentum=momentum, nesterov=bool(nesterov))


@OPTIMIZERS.register("adam")
def adam(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    return optax.adam(lr, b1=b1, b2=b2, eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4):
    return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


class Optimizer(NamedTuple):
    """A registered optimizer and its hyperparameters, as sorted (name, value) pairs."""

    name: str = "gd"
    args: tuple[tuple[str, Any], ...] = ()

    def transform(self, lr) -> optax.GradientTransformation:
        return OPTIMIZERS[self.name](lr, **dict(self.args))


def check_args(name: str, args: dict[str, Any]) -> None:
    """ValueError naming the first argument that optimizer ``name`` does not take."""
    params = inspect.signature(OPTIMIZERS[name]).parameters
    known = [p for p in params if p != "lr"]
    for key in args:
        if key not in known:
            raise ValueError(f"optimizer {name!r} takes no argument {key!r} (it takes: {', '.join(known) or 'none'})")


def optimizer_of(name: str, args: dict[str, Any]) -> Optimizer:
    return Optimizer(name, tuple(sorted(args.items())))
