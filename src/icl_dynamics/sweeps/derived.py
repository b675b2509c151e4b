"""Derived sweep values: a string ``"{expression}"`` in a spec's base or grid is computed for each grid point
from that point's other values, e.g. ``train.steps: "{8 * K**2 / lr}"`` makes the step count follow K^2/lr.

The expression is parsed with :mod:`ast` and evaluated by a small interpreter that knows numbers, the
arithmetic operators, a few math functions and the point's numeric config values: by their last name
(``num_features``, ``lr``, ``dominant_prob``, ...) and the short names K, N, d, p1, eps, seed. Nothing
else runs: no attribute access, no subscripts, no calls but the listed functions (never Python's eval).
A value for an integer key is rounded up (``steps`` of 12.5 -> 13).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

from ..config import RunConfig, flatten
from ..errors import SweepError
from ..fsio import clip

PATTERN = re.compile(r"^\{(.+)\}$", re.S)
MAX_EXPRESSION = 200  # characters
ALIASES = {"K": "data.num_features", "N": "data.prompt_length", "d": "data.dim", "p1": "data.dominant_prob"}
FUNCTIONS = {"ceil": math.ceil, "floor": math.floor, "round": round, "sqrt": math.sqrt, "log": math.log,
             "log2": math.log2, "log10": math.log10, "exp": math.exp, "min": min, "max": max, "abs": abs,
             "int": int}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def is_derived(value: Any) -> bool:
    return isinstance(value, str) and PATTERN.match(value.strip()) is not None


def names_of(cfg: RunConfig) -> dict[str, float]:
    """The numeric values an expression may use, by last name and by alias."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    short: dict[str, Any] = {}
    for key, value in flat.items():
        last = key.rsplit(".", 1)[-1]
        short[last] = value if last not in short else None  # an ambiguous last name is not offered
    names = {k: v for k, v in short.items() if v is not None}
    names.update({a: flat[k] for a, k in ALIASES.items() if k in flat})
    return names


def evaluate(expression: str, names: dict[str, float], key: str) -> float:
    """The value of ``{expression}`` for one grid point; SweepError (one line) for anything else."""
    text = PATTERN.match(expression.strip()).group(1).strip()
    where = f"'{key}: {clip(expression, 60)}'"
    if len(text) > MAX_EXPRESSION:
        raise SweepError(f"derived value {where} is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise SweepError(f"derived value {where} is not an arithmetic expression") from None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise SweepError(f"derived value {where}: unknown name '{node.id}' (known: "
                                 f"{', '.join(sorted(names))})")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e12):
                raise SweepError(f"derived value {where}: a power too large to compute")
            return _BINARY[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
                and not node.keywords and len(node.args) <= 4:
            return FUNCTIONS[node.func.id](*(ev(a) for a in node.args))
        raise SweepError(f"derived value {where}: only numbers, names, + - * / // % ** and "
                         f"{', '.join(FUNCTIONS)} are allowed")

    try:
        value = ev(tree)
    except (ArithmeticError, ValueError, TypeError) as e:
        raise SweepError(f"derived value {where} cannot be computed here ({type(e).__name__})") from None
    try:
        finite = not isinstance(value, complex) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise SweepError(f"derived value {where} is not a finite number")
    return value


def resolve(cfg: RunConfig, derived: dict[str, str], int_keys: set[str]) -> dict[str, Any]:
    """{key: value} of every derived entry at the grid point ``cfg`` (its other values already set)."""
    names = names_of(cfg)
    out = {}
    for key, expression in derived.items():
        value = evaluate(expression, names, key)
        out[key] = math.ceil(value) if key in int_keys else float(value)
    return out
