"""Sweep specs: the YAML a user writes (``base``, ``grid``, ``seeds``...), validated and expanded into one
validated run config per grid point (docs/sweeps.md)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import RunConfig, config_keys, flatten, int_keys, read_yaml, set_dotted, validate, with_overrides
from ..errors import ConfigError, SweepError
from ..fsio import clip
from .derived import is_derived, resolve

AXIS_FORMS = ("range", "linspace", "logspace", "int_logspace")
MAX_RUNS = 100_000  # grid points in one sweep (each is a run; a sweep directory holds a row per run)


class SweepSpec(BaseModel):
    """The top level of a sweep YAML. ``base`` and ``grid`` keys are dotted config keys."""

    model_config = ConfigDict(extra="forbid", strict=True)
    base: dict[str, Any] = Field(default_factory=dict, description="config values shared by every run")
    grid: dict[str, Any] = Field(default_factory=dict, description="axes; the sweep is their product")
    seeds: int | None = Field(None, ge=1, le=MAX_RUNS, description="shorthand for the axis seed: {range: [0, seeds]}")
    keep_trajectories: bool = Field(False, description="write a run directory per run under runs/")
    max_batch: int = Field(16, ge=1, le=4096, description="most runs in one vectorised batch")


def _check_count(where: str, n: int) -> None:
    if n > MAX_RUNS:
        raise SweepError(f"{where} has {n:,} values, over the limit of {MAX_RUNS:,} runs per sweep")


def _check_key(key: str, raw: Any) -> None:
    """Grid axes name one config value each (a whole section would replace the base's keys silently)."""
    if key not in config_keys():
        near = sorted(k for k in config_keys() if k.startswith(f"{key}.") or k.endswith(f".{key}"))
        hint = f"; did you mean {', '.join(near[:4])}?" if near else ""
        raise SweepError(f"grid '{clip(key)}' is not a config key{hint}")
    if isinstance(raw, list) and key != "train.optimizer_args" and any(isinstance(v, dict) for v in raw):
        raise SweepError(f"grid '{key}': values must be single values, not mappings")


def _axis_values(key: str, raw: Any) -> list[Any]:
    """Expand one grid axis: a list, or one of {range|linspace|logspace|int_logspace: [...]}."""
    where = f"grid '{key}'"
    if isinstance(raw, list):
        if not raw:
            raise SweepError(f"{where} is an empty list")
        _check_count(where, len(raw))
        return raw
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in AXIS_FORMS):
        raise SweepError(f"{where} must be a list or one of {{range|linspace|logspace|int_logspace: [...]}}, "
                         f"got {raw!r}")
    form, args = next(iter(raw.items()))
    nums = args if isinstance(args, list) else None
    if nums is None or any(isinstance(a, bool) or not isinstance(a, (int, float)) for a in nums):
        raise SweepError(f"{where}: {form} expects a list of numbers, got {args!r}")
    if form == "range":
        if not 1 <= len(nums) <= 3 or any(not isinstance(a, int) for a in nums):
            raise SweepError(f"{where}: range expects [stop], [start, stop] or [start, stop, step] integers "
                             f"(stop excluded), got {args!r}")
        if len(nums) == 3 and nums[2] == 0:
            raise SweepError(f"{where}: range step must not be 0")
        _check_count(where, len(range(*nums)))
        values: list[Any] = list(range(*nums))
    else:
        if len(nums) != 3 or not isinstance(nums[2], int) or nums[2] < 1:
            raise SweepError(f"{where}: {form} expects [first, last, count] with an integer count >= 1, "
                             f"got {args!r}")
        _check_count(where, nums[2])
        lo, hi, n = float(nums[0]), float(nums[1]), nums[2]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise SweepError(f"{where}: {form} bounds must be finite, got {args!r}")
        if form == "linspace":
            values = [float(v) for v in np.linspace(lo, hi, n)]
        elif lo <= 0 or hi <= 0:
            raise SweepError(f"{where}: {form} bounds must be > 0, got {args!r}")
        elif form == "logspace":
            values = [float(v) for v in np.geomspace(lo, hi, n)]
        else:  # int_logspace: rounded, duplicates dropped, order kept
            values = list(dict.fromkeys(int(v) for v in np.rint(np.geomspace(lo, hi, n))))
    if not values:
        raise SweepError(f"{where}: {form} {args!r} gives no values")
    return values


def parse_spec(obj: dict[str, Any]) -> SweepSpec:
    """Validate the top level of a spec; one-line :class:`SweepError` naming the bad key."""
    if not isinstance(obj, dict):
        raise SweepError(f"a sweep spec must be a mapping, not {type(obj).__name__}")
    try:
        spec = SweepSpec.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(SweepSpec.model_fields)
            raise SweepError(f"unknown sweep key '{loc}' (known: {known})") from None
        raise SweepError(f"invalid sweep value for '{loc}': {err['msg']} (got {err.get('input')!r})") from None
    if spec.seeds is not None and "seed" in spec.grid:
        raise SweepError("give the seeds either as 'seeds:' or as the grid axis 'seed', not both")
    return spec


def normalise(spec: SweepSpec) -> dict[str, Any]:
    """The spec as stored in sweep.yaml: base flattened to dotted keys, axes as written."""
    d = spec.model_dump(mode="json")
    d["base"] = flatten(d["base"])
    return d


def load_spec(spec: SweepSpec | dict[str, Any] | str | Path) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec(spec)
    return parse_spec(read_yaml(spec, what="sweep spec"))


class PlannedRun(NamedTuple):
    index: int  # position in the grid (first occurrence)
    config: RunConfig
    hash: str


def _own_base_error(tree: dict[str, Any], flat_base: dict[str, Any]) -> str | None:
    """An error of the base that no grid point can mend: a value that is wrong for its key on its own (its
    type or range, or an unknown key), named as ``validate`` names it, even where every grid point replaces
    it. None when the base fails only as a whole: values that must fit together (``data.features: gram`` and
    ``data.feature_gram``, d >= K) may be completed by the grid."""
    try:
        RunConfig.model_validate(tree)
    except ValidationError as e:
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            key = next((k for n in range(len(loc), 0, -1) if (k := ".".join(loc[:n])) in flat_base), None)
            if key is None:  # a check across values (a model validator's error names a section, or nothing)
                continue
            alone: dict[str, Any] = {}
            set_dotted(alone, key, flat_base[key])
            try:
                validate(alone)
            except ConfigError as own:
                return str(own)
    except (TypeError, ValueError, OverflowError):  # pragma: no cover - pydantic wraps most
        return None
    return None


def expand(spec: SweepSpec) -> list[PlannedRun]:
    """Every grid point as a validated config, in grid order; configs with equal hashes appear once.

    What is validated is what each run will use: the base merged with the grid point. A base that is only
    complete with the grid's values (``data.features: gram`` with ``data.feature_gram`` as an axis) is
    accepted. A base value wrong on its own (:func:`_own_base_error`), or a base that fails with its own error
at every grid point, is one ``sweep base: ...`` line; any other failure names its grid point."""
    tree: dict[str, Any] = {}
    flat_base = flatten(spec.base)
    derived = {k: v for k, v in flat_base.items() if is_derived(v)}  # computed per grid point (derived.py)
    for key, value in flat_base.items():
        if key not in derived:
            set_dotted(tree, key, value)
    try:
        base: RunConfig | None = validate(tree)
        base_error = None
    except ConfigError as e:
        if (own := _own_base_error(tree, flat_base)) is not None:  # no grid point can mend it
            raise SweepError(f"sweep base: {own}") from None
        base, base_error = None, str(e)  # perhaps only incomplete without the grid: judged per grid point below
    for k, v in spec.grid.items():
        _check_key(k, v)
    axes = {k: _axis_values(k, v) for k, v in spec.grid.items()}  # each axis is counted before it is made
    points = math.prod(len(a) for a in axes.values()) * (spec.seeds or 1)
    if points > MAX_RUNS:
        raise SweepError(f"the grid has {points:,} points, over the limit of {MAX_RUNS:,} runs")
    if spec.seeds is not None:
        axes["seed"] = list(range(spec.seeds))
    if not axes:
        if base_error is not None:
            raise SweepError(f"sweep base: {base_error}")
        raise SweepError("the grid is empty; give at least one axis under 'grid:' (or 'seeds:')")
    keys = list(axes)
    # a d set in the base stays fixed; otherwise with_overrides keeps d tied to K (a tree without data.dim
    # resolves d = K by itself)
    pinned = {"data.dim": base.data.dim} if base is not None and "data.dim" in flat_base else {}

    def merged(values: dict[str, Any]) -> RunConfig:
        if base is not None:
            return with_overrides(base, {**pinned, **values})
        point_tree = copy.deepcopy(tree)
        for key, value in values.items():
            set_dotted(point_tree, key, value)
        return validate(point_tree)

    runs: dict[str, PlannedRun] = {}
    first_error: tuple[str, bool] | None = None  # (the first failing point's error, whether it is the base's own)
    ints = int_keys()
    for i, combo in enumerate(np.ndindex(*(len(axes[k]) for k in keys))):
        point = {k: axes[k][j] for k, j in zip(keys, combo)}
        later = {**derived, **{k: v for k, v in point.items() if is_derived(v)}}
        try:
            cfg = merged({k: v for k, v in point.items() if k not in later})
            if later:
                cfg = with_overrides(cfg, resolve(cfg, later, ints))
        except ConfigError as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            error = f"{e} (grid point {shown})"
            if base_error is None or runs:  # the base is fine (alone or at an earlier point): this point is wrong
                raise SweepError(error) from None
            if first_error is None:  # the base may be wrong at every point: look for one where it is not
                first_error = (error, str(e) == base_error)
            continue
        except (ArithmeticError, ValueError, TypeError) as e:  # e.g. a derived int too large for a float
            shown = ", ".join(f"{k}={clip(v, 60)!s}" for k, v in later.items())
            raise SweepError(f"derived value {shown} cannot be computed ({type(e).__name__})") from None
        if first_error is not None:  # the base is fine here, so the earlier failing point is the one to name
            raise SweepError(first_error[0])
        h = cfg.hash()
        runs.setdefault(h, PlannedRun(i, cfg, h))
    if first_error is not None:  # no point passed: the base's own error, or the first point's
        raise SweepError(f"sweep base: {base_error}" if first_error[1] else first_error[0])
    return list(runs.values())


def idle_axes(spec: SweepSpec, runs: list[PlannedRun]) -> list[str]:
    """Grid axes that cannot change any run's result (EngineSpec.ignored), e.g. N under mean field."""
    from ..engines import engine_spec

    notes = []
    for key in spec.grid:
        if all(key in engine_spec(r.config.train.engine).ignored(r.config) for r in runs):
            e = runs[0].config.train
            notes.append(f"grid axis '{key}' cannot change the result ({e.engine} engine"
                         + (f", {e.expectation} expectation" if e.engine == "population" else "")
                         + "): its runs will be identical")
    return notes
