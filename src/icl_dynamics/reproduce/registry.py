"""The claim registry: each claim is one check function plus a registration that declares where it comes
from, its criterion, and its negative controls.

A check maps a measurement (a dict the experiments produce) to a :class:`ClaimResult`. A control is a
setting or a perturbed dynamics in which the claim is false; its measurement goes through the same check,
which must return FAIL there (the tests run every control). A claim that no control can fail is not a
claim this report makes.

Register with::

    @register("name", statement=..., source=..., criterion=..., controls=[Control(...)])
    def name(m: dict) -> ClaimResult: ...

``measurement(results)`` and ``Control.measure(results)`` pick the inputs out of the experiments' results
(``results["measurements"][name]`` and ``results["controls"][control name]`` unless given otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple


class ClaimResult(NamedTuple):
    """passed; measured: the values the verdict rests on, with their uncertainties (JSON-ready); summary:
    one line for people."""

    passed: bool
    measured: dict[str, Any]
    summary: str


@dataclasses.dataclass(frozen=True)
class Control:
    """A setting (or perturbed measurement) where the claim is false, and why."""

    name: str
    setting: str
    why_false: str
    measure: Callable[[dict], dict] | None = None  # default: results["controls"][name]

    def input(self, results: dict) -> dict:
        return self.measure(results) if self.measure is not None else results["controls"][self.name]


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str
    kind: str  # "paper": a claim of the paper (or of its reviews); "finding": beyond the paper
    statement: str
    source: str
    criterion: str
    check: Callable[[dict], ClaimResult]
    controls: tuple[Control, ...]
    measurement: Callable[[dict], dict] | None = None  # default: results["measurements"][name]

    def input(self, results: dict) -> dict:
        return self.measurement(results) if self.measurement is not None else results["measurements"][self.name]


CLAIMS: dict[str, Claim] = {}


def register(name: str, *, statement: str, source: str, criterion: str, controls: list[Control],
             kind: str = "paper", measurement: Callable[[dict], dict] | None = None):
    """Register the decorated check as claim ``name`` (at least one control is required)."""
    if not controls:
        raise ValueError(f"claim '{name}' needs at least one negative control")

    def deco(fn: Callable[[dict], ClaimResult]):
        CLAIMS[name] = Claim(name, kind, statement, source, criterion, fn, tuple(controls), measurement)
        return fn

    return deco


def evaluate(results: dict) -> list[dict[str, Any]]:
    """Every registered claim on the results, with each control's verdict: the rows of claims.json."""
    rows = []
    for c in CLAIMS.values():
        r = c.check(c.input(results))
        ctrls = []
        for ctl in c.controls:
            cr = c.check(ctl.input(results))
            ctrls.append({"name": ctl.name, "setting": ctl.setting, "why_false": ctl.why_false,
                          "passed": bool(cr.passed), "measured": cr.measured, "summary": cr.summary})
        rows.append({"name": c.name, "kind": c.kind, "claim": c.statement, "source": c.source,
                     "criterion": c.criterion, "passed": bool(r.passed), "measured": r.measured,
                     "summary": r.summary, "controls": ctrls})
    return rows
