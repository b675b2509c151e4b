"""Configs from files and the command line: YAML (yamlio's limits), ``--set dotted.key=value`` overrides,
dotted keys, and validation errors as one line naming the key."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from . import yamlio
from .config import RunConfig
from .errors import ConfigError
from .fsio import clip
from .yamlio import load_value


def _key_path(loc: tuple) -> list[str]:
    """The config keys in a pydantic error location, without union-branch tags ('str', 'list[float]')."""
    keys, model = [], RunConfig
    for part in loc:
        if model is None or not isinstance(part, str):
            break
        keys.append(part)
        field = model.model_fields.get(part)
        if field is None:  # an unknown (extra) key: name it, stop there
            break
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return keys


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    # union branches show up in loc as e.g. "list[float]" or "literal['a']"; they are not keys.
    loc = ".".join(_key_path(first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    if m := re.match(r"^([\w.]+): (.*)$", msg):  # a cross-field check names its own (dotted) key
        loc, msg = f"{loc}.{m.group(1)}" if loc else m.group(1), m.group(2)
    where = f"'{loc}'" if loc else "config"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {where}"
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"invalid value for {where}: {msg}{shown}"


def int_keys() -> set[str]:
    """The dotted keys whose values are whole numbers."""
    out = set()
    for name, field in RunConfig.model_fields.items():
        sub = field.annotation
        fields = sub.model_fields.items() if isinstance(sub, type) and issubclass(sub, BaseModel) else [(None, field)]
        for k, f in fields:
            if f.annotation is int or int in typing.get_args(f.annotation):
                out.add(f"{name}.{k}" if k else name)
    return out


def config_keys() -> set[str]:
    """Every settable dotted key of a RunConfig (``data.num_features``, ..., ``seed``)."""
    keys = set()
    for name, field in RunConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= {f"{name}.{k}" for k in sub.model_fields}
        else:
            keys.add(name)
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: value} (the inverse of :func:`set_dotted`)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted='a.b'``, creating levels as needed."""
    keys = dotted.split(".")
    if any(not k for k in keys):
        raise ConfigError(f"malformed key '{dotted}'")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"'{k}' in '{dotted}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``'a.b=value'`` and parse the value as YAML 1.2 (yamlio: ``010`` and ``1:30`` are not numbers)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{clip(text)}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    return key, load_value(raw, key=key)


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping (a config, a sweep spec): a regular file of bounded size, parsed with
    yamlio's limits. Empty gives {}."""
    tree = yamlio.read_yaml(path, what=what)
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} '{clip(path)}' must hold a mapping of keys, not {type(tree).__name__}")
    return tree


def validate(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a :class:`RunConfig`; raise :class:`ConfigError` naming the bad key."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config must be a mapping, not {type(tree).__name__}")
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
    except (TypeError, ValueError, OverflowError) as e:  # pragma: no cover - pydantic wraps most
        raise ConfigError(f"invalid config: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file <- ``--set`` overrides, validated."""
    tree: dict[str, Any] = read_yaml(path) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value)
    return validate(tree)


def with_overrides(cfg: RunConfig, dotted: dict[str, Any]) -> RunConfig:
    """A new validated config: ``cfg`` with dotted keys replaced (used by sweeps and reproduce)."""
    tree = cfg.to_dict()
    if tree["data"].get("dim") == tree["data"]["num_features"] and "data.num_features" in dotted \
            and "data.dim" not in dotted:
        tree["data"]["dim"] = None  # keep d tied to K when only K changes
    for key, value in dotted.items():
        set_dotted(tree, key, value)
    return validate(tree)
