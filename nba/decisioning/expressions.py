"""A small, whitelisted expression language for business rules, values and priority formulas.

    age >= 18 and credit_score > 500
    not has_mortgage
    rfm_segment in ("best_active", "loyal_low_basket")
    0.1 * clv
    propensity * value * (1 + lever)

Text is parsed once (Python's own parser, `ast.parse`, which builds a tree and executes
nothing) and every node is checked against a whitelist: names, numbers, strings, booleans,
`and` / `or` / `not`, comparisons (`== != < <= > >=`, chained, `in` / `not in` a literal
tuple or list), `+ - * / **` and unary minus, and the functions `min`, `max`, `abs`. Anything
else (attribute access, subscripts, calls to other functions, lambdas, comprehensions...) is
an `ExpressionError` naming the construct and its position. The checked tree is then turned
into our own node objects, which evaluate over an environment mapping each name to either a
numpy array (a batch of customers) or a plain Python scalar (one customer, about 20x cheaper
per operation than a one-element array). Nothing is ever `eval`-ed.

A missing value (NaN) makes every comparison false, so a rule on a missing feature fails
(and the decision trace names the rule).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nba.errors import ConfigError


class ExpressionError(ConfigError):
    """An expression that does not parse or uses something outside the whitelist."""


Env = Mapping[str, Any]

_CMP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
             ast.In: "in", ast.NotIn: "not in"}
_FUNCS = ("min", "max", "abs")


class Node:
    """An expression node: `evaluate(env)` gives an array (batch) or a scalar (one customer)."""

    def evaluate(self, env: Env) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def names(self) -> set[str]:
        return set()


@dataclass(frozen=True)
class Const(Node):
    value: Any

    def evaluate(self, env: Env) -> Any:
        return self.value


@dataclass(frozen=True)
class Name(Node):
    name: str

    def evaluate(self, env: Env) -> Any:
        return env[self.name]

    def names(self) -> set[str]:
        return {self.name}


def _truth(x: Any) -> Any:
    """Rules read 0/1 flags as booleans (`not has_mortgage`); NaN is false."""
    if isinstance(x, np.ndarray):
        if x.dtype == bool:
            return x
        if x.dtype.kind == "f":
            return np.nan_to_num(x, nan=0.0) != 0
        return x.astype(bool)
    if isinstance(x, float) and math.isnan(x):
        return False
    return bool(x)


@dataclass(frozen=True)
class Not(Node):
    operand: Node

    def evaluate(self, env: Env) -> Any:
        v = _truth(self.operand.evaluate(env))
        return np.logical_not(v) if isinstance(v, np.ndarray) else not v

    def names(self) -> set[str]:
        return self.operand.names()


@dataclass(frozen=True)
class BoolOp(Node):
    kind: str  # "and" | "or"
    operands: tuple[Node, ...]

    def evaluate(self, env: Env) -> Any:
        values = [_truth(o.evaluate(env)) for o in self.operands]
        if any(isinstance(v, np.ndarray) for v in values):
            fn = np.logical_and if self.kind == "and" else np.logical_or
            out = values[0]
            for v in values[1:]:
                out = fn(out, v)
            return np.asarray(out)
        return all(values) if self.kind == "and" else any(values)

    def names(self) -> set[str]:
        return set().union(*(o.names() for o in self.operands))


@dataclass(frozen=True)
class Compare(Node):
    left: Node
    ops: tuple[str, ...]
    comparators: tuple[Node, ...]

    def evaluate(self, env: Env) -> Any:
        result: Any = None
        left = self.left.evaluate(env)
        for op, node in zip(self.ops, self.comparators, strict=True):
            right = node.evaluate(env)
            if op in ("in", "not in"):
                if isinstance(left, np.ndarray):
                    part = np.isin(left, np.asarray(right, dtype=object if isinstance(right[0], str) else None))
                    part = ~part if op == "not in" else part
                else:
                    part = (left in right) if op == "in" else (left not in right)  # type: ignore[assignment]
            else:
                part = _COMPARE[op](left, right)
                if isinstance(part, np.ndarray):
                    part = np.asarray(part, dtype=bool)
            result = part if result is None else (
                np.logical_and(result, part) if isinstance(result, np.ndarray) or isinstance(part, np.ndarray)
                else (result and part))
            left = right
        return result

    def names(self) -> set[str]:
        return self.left.names().union(*(c.names() for c in self.comparators))


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}


@dataclass(frozen=True)
class Arith(Node):
    op: str
    left: Node
    right: Node

    def evaluate(self, env: Env) -> Any:
        return _ARITH_BY_TEXT[self.op](self.left.evaluate(env), self.right.evaluate(env))

    def names(self) -> set[str]:
        return self.left.names() | self.right.names()


_ARITH_BY_TEXT = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                  "**": operator.pow}
_ARITH_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


@dataclass(frozen=True)
class Neg(Node):
    operand: Node

    def evaluate(self, env: Env) -> Any:
        return -self.operand.evaluate(env)

    def names(self) -> set[str]:
        return self.operand.names()


@dataclass(frozen=True)
class Func(Node):
    name: str
    args: tuple[Node, ...]

    def evaluate(self, env: Env) -> Any:
        values = [a.evaluate(env) for a in self.args]
        arrays = any(isinstance(v, np.ndarray) for v in values)
        if self.name == "abs":
            return np.abs(values[0]) if arrays else abs(values[0])
        if arrays:
            fn = np.minimum if self.name == "min" else np.maximum
            out = values[0]
            for v in values[1:]:
                out = fn(out, v)
            return out
        return (min if self.name == "min" else max)(values)

    def names(self) -> set[str]:
        return set().union(*(a.names() for a in self.args))


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression: its text, its tree and the names it reads."""

    text: str
    root: Node
    kind: str  # "rule" (true/false) or "number"

    @property
    def names(self) -> set[str]:
        return self.root.names()

    def evaluate(self, env: Env) -> Any:
        value = self.root.evaluate(env)
        return _truth(value) if self.kind == "rule" else value

    def __str__(self) -> str:
        return self.text


def parse(text: str, *, kind: str = "rule", names: set[str] | frozenset[str] | None = None,
          where: str = "expression") -> Expression:
    """Parse and check `text`; with `names`, every name it reads must be one of them.

    `where` says where the text came from (e.g. "action 'mortgage' eligibility"), so an error
    names the action, the rule and the reason.
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"{where}: expected a non-empty expression, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{where}: '{text}' is not a valid expression ({exc.msg} at column "
                              f"{exc.offset})") from None
    root = _convert(tree.body, text, where)
    if kind == "number" and isinstance(root, BoolOp | Not | Compare):
        raise ExpressionError(f"{where}: '{text}' is a condition; expected a number (a formula)")
    expr = Expression(text.strip(), root, kind)
    if names is not None:
        unknown = sorted(expr.names - set(names))
        if unknown:
            raise ExpressionError(f"{where}: '{text}' reads unknown name(s) {unknown}; known names are "
                                  f"{', '.join(sorted(names))}")
    return expr


def _convert(node: ast.AST, text: str, where: str) -> Node:
    def bad(what: str) -> ExpressionError:
        col = getattr(node, "col_offset", 0) + 1
        return ExpressionError(f"{where}: '{text}': {what} (column {col}) is not allowed; rules use names, "
                               "numbers, strings, and/or/not, comparisons, + - * / ** and min/max/abs")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool | int | float | str):
            return Const(node.value)
        raise bad(f"the constant {node.value!r}")
    if isinstance(node, ast.Name):
        if node.id in ("True", "False"):  # pragma: no cover - parsed as constants
            return Const(node.id == "True")
        return Name(node.id)
    if isinstance(node, ast.BoolOp):
        return BoolOp("and" if isinstance(node.op, ast.And) else "or",
                      tuple(_convert(v, text, where) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            return Not(_convert(node.operand, text, where))
        if isinstance(node.op, ast.USub):
            inner = _convert(node.operand, text, where)
            return Const(-inner.value) if isinstance(inner, Const) and not isinstance(inner.value, str) else Neg(inner)
        if isinstance(node.op, ast.UAdd):
            return _convert(node.operand, text, where)
        raise bad(f"the operator {type(node.op).__name__}")
    if isinstance(node, ast.Compare):
        ops: list[str] = []
        comparators: list[Node] = []
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _CMP_TEXT:
                raise bad(f"the comparison {type(op).__name__}")
            ops.append(_CMP_TEXT[type(op)])
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(comp, ast.Tuple | ast.List) or not comp.elts:
                    raise bad("'in' needs a non-empty literal tuple or list")
                items = []
                for e in comp.elts:
                    c = _convert(e, text, where)
                    if not isinstance(c, Const):
                        raise bad("'in' needs literal values")
                    items.append(c.value)
                if len({type(i) is str for i in items}) > 1:
                    raise bad("'in' needs values of one kind (all strings or all numbers)")
                comparators.append(Const(tuple(items)))
            else:
                comparators.append(_convert(comp, text, where))
        return Compare(_convert(node.left, text, where), tuple(ops), tuple(comparators))
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITH_TEXT:
            raise bad(f"the operator {type(node.op).__name__}")
        return Arith(_ARITH_TEXT[type(node.op)], _convert(node.left, text, where), _convert(node.right, text, where))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            raise bad("a call to anything but min, max, abs")
        if node.keywords:
            raise bad("keyword arguments")
        args = tuple(_convert(a, text, where) for a in node.args)
        if not args or (node.func.id == "abs" and len(args) != 1) or (node.func.id != "abs" and len(args) < 2):
            raise bad(f"{node.func.id}() with {len(args)} argument(s)")
        return Func(node.func.id, args)
    raise bad(f"{type(node).__name__}")
