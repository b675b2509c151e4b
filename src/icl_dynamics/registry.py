"""One small registry type for everything a user can name in a config: feature distributions, attention
variants, engines and optimizers.

A registry knows the module that registers its built-in entries and imports it on first lookup, so
``config.py`` can validate a name without importing the modules that implement it (no import circle):
the config sits below the engines, and the engines register themselves here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. ``builtins`` is the module path whose import registers the built-in ones."""

    def __init__(self, kind: str, builtins: str):
        self.kind, self._builtins, self._entries = kind, builtins, {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. Registering a taken name replaces the entry, so a user
        can override a built-in on purpose."""
        def deco(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._builtins)

    def __getitem__(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._entries))

    def unknown(self, name: object) -> str:
        """The one message for a name that is not registered."""
        return f"unknown {self.kind} {name!r}; known: {', '.join(self)}"

    def check(self, name: str) -> str:
        """``name`` if registered; ValueError (pydantic turns it into a key-naming ConfigError) if not."""
        if name not in self:
            raise ValueError(self.unknown(name))
        return name


DISTRIBUTIONS: Registry = Registry("distribution", "icl_dynamics.data")
ATTENTION: Registry = Registry("attention", "icl_dynamics.model")
ENGINES: Registry = Registry("engine", "icl_dynamics.engines")
OPTIMIZERS: Registry = Registry("optimizer", "icl_dynamics.optim")
