"""A small, whitelisted, bounded expression language for business rules, values and priority formulas.

    age >= 18 and credit_score > 500
    not has_mortgage
    rfm_segment in ("best_active", "loyal_low_basket")
    0.1 * clv
    propensity * value * (1 + lever)

Text is parsed once (Python's own parser, `ast.parse`, which builds a tree and executes
nothing) and every node is checked against a whitelist: names, numbers, strings, booleans,
`and` / `or` / `not`, comparisons (`== != < <= > >=`, chained, `in` / `not in` a literal
tuple or list), `+ - * / **` and unary minus, and the functions `min`, `max`, `abs`. Trigger
conditions may also read `propensity(<action>)`, `value(<action>)` and `event.<property>`:
each is parsed into a plain name (`"propensity(mortgage)"`, `"event.kind"`) that whoever
evaluates the expression provides, so they add no new computation. Anything
else (other attribute access, subscripts, calls to other functions, lambdas, comprehensions, `//`,
`%`, shifts...) is an `ExpressionError` naming the construct and its position. The checked
tree is then turned into our own node objects, which evaluate over an environment mapping
each name to either a numpy array (a batch of customers) or a plain Python scalar (one
customer, about 20x cheaper per operation than a one-element array). Nothing is ever `eval`-ed.

What a rule may compute is bounded when it is loaded, so no rule can hang or exhaust the
service that evaluates it (the `MAX_*` constants; each refusal names the limit):

* the text, its tree (number of parts, nesting depth) and its string literals are short;
* integer literals are at most 2**53 in magnitude (exact as a 64-bit float);
* the exponent of `**` is a constant of at most `MAX_EXPONENT` in magnitude (`9 ** 9 ** 9`
  is refused: the inner power folds to 387420489);
* strings are compared, never computed with (`'a' * 10**9` is refused).

Operations on constants alone are folded once at load, with the same arithmetic as at run
time. Arithmetic is IEEE 64-bit floating point on arrays and on scalars alike (numpy's rules:
`x / 0` is inf or NaN, an overflow is inf; a power is numpy's, min/max are np.minimum /
np.maximum), so a rule gives bit for bit the same result for a batch and for one customer;
arithmetic on a string value is an `ExpressionError` in both (`tests/test_rule_fuzz.py`).

A missing value (NaN) makes every ordering and `==` comparison false, so a rule on a missing
feature fails (and the decision trace names the rule).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nba.errors import ConfigError


class ExpressionError(ConfigError):
    """An expression that does not parse, uses something outside the whitelist or exceeds a limit."""


Env = Mapping[str, Any]

# What one expression may be: checked at load, each refusal names the limit.
MAX_LENGTH = 1000  # characters of the text
MAX_NODES = 200  # parts of its tree: names, numbers, strings, operators, list items
MAX_DEPTH = 64  # nesting depth of its tree (a chain `a + b + c` is as deep as it is long)
MAX_STRING = 200  # characters of one string literal
MAX_INTEGER = 2**53  # magnitude of an integer literal (every integer up to it is exact as a float)
MAX_EXPONENT = 16  # magnitude of the (constant) exponent of **

_CMP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
             ast.In: "in", ast.NotIn: "not in"}
_FUNCS = ("min", "max", "abs")
# Names a trigger condition may read besides features and scores (the catalog's rules may not:
# its checker refuses them as unknown names): `propensity(mortgage)` and `value(mortgage)` are the
# names "propensity(mortgage)" and "value(mortgage)", `event.kind` is the name "event.kind".
ACTION_FUNCS = ("propensity", "value")
EVENT = "event"
_NUMBERS = (int, float, np.integer, np.floating, np.bool_)  # bool is an int


def _num(x: Any) -> Any:
    """An operand of arithmetic as a 64-bit float (a Python float, or a float64 array).

    Arithmetic on a string (or a missing string, None) is an error on arrays and scalars alike.
    """
    t = type(x)
    if t is float:
        return x
    if t is np.ndarray:
        kind = x.dtype.kind
        if kind == "f":
            return x
        if kind in "biu":
            return x.astype(np.float64)
        if kind == "O" and all(isinstance(v, _NUMBERS) for v in x.flat):
            return x.astype(np.float64)
        bad = next((v for v in x.flat if not isinstance(v, _NUMBERS)), x.dtype)
        raise ExpressionError(f"arithmetic needs numbers, got {bad!r:.40}")
    if isinstance(x, _NUMBERS):
        return float(x)
    raise ExpressionError(f"arithmetic needs numbers, got {x!r:.40}")


def _div(a: Any, b: Any) -> Any:
    if type(a) is float and type(b) is float:
        if b != 0.0:
            return a / b  # correctly rounded, as numpy's
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.divide(a, b))  # inf or NaN where Python raises
    with np.errstate(divide="ignore", invalid="ignore"):  # inf and NaN are the defined results
        return np.divide(a, b)


def _pow(a: Any, b: Any) -> Any:
    """numpy's power, for one customer too: a one-entry array gives bit for bit what any batch
    gives (numpy's vector power is not the C library's `pow` that Python's `**` calls, and
    Python raises on an overflow, goes complex on a negative base)."""
    with np.errstate(all="ignore"):
        if type(a) is float:
            return float(np.power(np.array([a]), b)[0])
        return np.power(a, b)


_ARITH_BY_TEXT: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": _div, "**": _pow}
_ARITH_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


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
    """Rules read 0/1 flags as booleans (`not has_mortgage`); NaN and None are false."""
    if isinstance(x, np.ndarray):
        if x.dtype == bool:
            return x
        if x.dtype.kind == "f":
            return np.nan_to_num(x, nan=0.0) != 0
        if x.dtype.kind == "O":
            return np.fromiter((_truth(v) for v in x.flat), dtype=bool, count=x.size).reshape(x.shape)
        return x.astype(bool)
    if isinstance(x, float | np.floating) and math.isnan(x):
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


def _isin(left: np.ndarray, items: tuple[Any, ...]) -> np.ndarray:
    """`left in items` for each entry; strings and None compared one item at a time, as a scalar would
    be (np.isin sorts object arrays, which fails on a mix of None and strings)."""
    if left.dtype.kind == "O" or isinstance(items[0], str):
        out = np.zeros(left.shape, dtype=bool)
        for v in items:
            out |= np.asarray(left == v, dtype=bool)
        return out
    return np.isin(left, np.asarray(items, dtype=np.float64))


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
                    part = _isin(left, right)
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
        # no local names for the operands: a temporary array referenced once is reused by numpy
        # for the result (binding it to a name costs a fresh 800 kB and its page faults per 100k rows)
        return _ARITH_BY_TEXT[self.op](_num(self.left.evaluate(env)), _num(self.right.evaluate(env)))

    def names(self) -> set[str]:
        return self.left.names() | self.right.names()


@dataclass(frozen=True)
class Neg(Node):
    operand: Node

    def evaluate(self, env: Env) -> Any:
        return -_num(self.operand.evaluate(env))

    def names(self) -> set[str]:
        return self.operand.names()


def _scalar_extreme(name: str, values: list[float]) -> float:
    """min / max of floats exactly as np.minimum / np.maximum: NaN when any is NaN, and of two
    equal values the second (which tells 0.0 from -0.0, and 1 / -0.0 is -inf)."""
    out = values[0]
    for v in values[1:]:
        if out != out or v != v:
            return math.nan
        out = out if (out < v if name == "min" else out > v) else v
    return out


def _call(name: str, values: list[Any]) -> Any:
    arrays = any(isinstance(v, np.ndarray) for v in values)
    if name == "abs":
        return np.abs(values[0]) if arrays else abs(values[0])
    if arrays:
        fn = np.minimum if name == "min" else np.maximum
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return out
    return _scalar_extreme(name, values)


@dataclass(frozen=True)
class Func(Node):
    name: str
    args: tuple[Node, ...]

    def evaluate(self, env: Env) -> Any:
        return _call(self.name, [_num(a.evaluate(env)) for a in self.args])

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
        try:
            value = self.root.evaluate(env)
        except ExpressionError as exc:
            raise ExpressionError(f"'{self.text}': {exc}") from None
        return _truth(value) if self.kind == "rule" else value

    def __str__(self) -> str:
        return self.text


def parse(text: str, *, kind: str = "rule", names: set[str] | frozenset[str] | None = None,
          where: str = "expression") -> Expression:
    """Parse, check and bound `text`; with `names`, every name it reads must be one of them.

    `where` says where the text came from (e.g. "action 'mortgage' eligibility"), so an error
    names the action, the rule and the reason (for a bound: the limit).
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"{where}: expected a non-empty expression, got {text!r}")
    source = text.strip()
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"{where}: '{source[:60]}...' is {len(source)} characters long, over the limit "
                              f"of {MAX_LENGTH} characters for one expression")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"{where}: '{text}' is not a valid expression ({exc.msg} at column "
                              f"{exc.offset})") from None
    except (ValueError, MemoryError, RecursionError) as exc:  # null bytes; a parser stack overflow
        raise ExpressionError(f"{where}: '{text}' is not a valid expression ({exc})") from None
    _check_size(tree.body, text, where)
    root = _convert(tree.body, text, where)
    if kind == "number" and isinstance(root, BoolOp | Not | Compare):
        raise ExpressionError(f"{where}: '{text}' is a condition; expected a number (a formula)")
    expr = Expression(source, root, kind)
    if names is not None:
        unknown = sorted(expr.names - set(names))
        if unknown:
            raise ExpressionError(f"{where}: '{text}' reads unknown name(s) {unknown}; known names are "
                                  f"{', '.join(sorted(names))}")
    return expr


def _check_size(root: ast.expr, text: str, where: str) -> None:
    """The number of parts and the nesting depth of the tree, counted without recursion."""
    count, deepest = 0, 0
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        deepest = max(deepest, depth)
        if count > MAX_NODES:
            raise ExpressionError(f"{where}: '{text}' has more parts (names, numbers, operators, list items) "
                                  f"than the limit of {MAX_NODES}")
        if deepest > MAX_DEPTH:
            raise ExpressionError(f"{where}: '{text}' nests deeper than the limit of {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))


def _fold(node: Node) -> Node:
    """An operation on constants alone, computed once (with the run-time arithmetic)."""
    if isinstance(node, Arith) and isinstance(node.left, Const) and isinstance(node.right, Const):
        return Const(node.evaluate({}))
    if isinstance(node, Neg) and isinstance(node.operand, Const):
        return Const(node.evaluate({}))
    if isinstance(node, Func) and all(isinstance(a, Const) for a in node.args):
        return Const(node.evaluate({}))
    return node


def _show(x: float) -> str:
    """A folded number as a person wrote it: 387420489, not 3.8742e+08."""
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e18 else f"{x:g}"


def _convert(node: ast.AST, text: str, where: str) -> Node:
    def refuse(what: str, at: ast.AST = node) -> ExpressionError:
        return ExpressionError(f"{where}: '{text}': {what} (column {getattr(at, 'col_offset', 0) + 1})")

    def bad(what: str) -> ExpressionError:
        return refuse(f"{what} is not allowed; rules use names, numbers, strings, and/or/not, comparisons, "
                      "+ - * / ** and min/max/abs")

    def numeric(operand: Node, at: ast.AST, op: str) -> Node:
        if isinstance(operand, Const) and isinstance(operand.value, str):
            what = "string repetition" if op == "*" else "arithmetic"
            raise refuse(f"{what} on the string {operand.value[:40]!r} is not allowed; strings are only "
                         "compared (== != in), never computed with", at)
        return Const(float(operand.value)) if isinstance(operand, Const) else operand  # as at run time

    def conv(child: ast.AST) -> Node:
        return _convert(child, text, where)

    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                raise refuse(f"a string of {len(v)} characters is over the limit of {MAX_STRING}")
            return Const(v)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INTEGER:
            shown = str(v) if len(str(v)) <= 30 else f"of {len(str(v))} digits"
            raise refuse(f"the integer {shown} is over the limit of 2**53 ({MAX_INTEGER}) in magnitude")
        if isinstance(v, bool | int | float):
            return Const(v)
        raise bad(f"the constant {v!r:.40}")
    if isinstance(node, ast.Name):
        return Name(node.id)
    if isinstance(node, ast.Attribute):  # only `event.<property>`: a trigger reads its event's properties
        if isinstance(node.value, ast.Name) and node.value.id == EVENT and isinstance(node.ctx, ast.Load):
            return Name(f"{EVENT}.{node.attr}")
        raise bad("Attribute access (other than event.<property>)")
    if isinstance(node, ast.BoolOp):
        return BoolOp("and" if isinstance(node.op, ast.And) else "or", tuple(conv(v) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            return Not(conv(node.operand))
        if isinstance(node.op, ast.USub):
            inner = conv(node.operand)
            if isinstance(inner, Const) and isinstance(inner.value, int | float) and not isinstance(inner.value, bool):
                return Const(-inner.value)  # a negative literal keeps its type (an int in an `in` list)
            return _fold(Neg(numeric(inner, node.operand, "-")))
        if isinstance(node.op, ast.UAdd):
            return numeric(conv(node.operand), node.operand, "+")
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
                    c = conv(e)
                    if not isinstance(c, Const):
                        raise bad("'in' needs literal values")
                    items.append(c.value)
                if len({type(i) is str for i in items}) > 1:
                    raise bad("'in' needs values of one kind (all strings or all numbers)")
                comparators.append(Const(tuple(items)))
            else:
                comparators.append(conv(comp))
        return Compare(conv(node.left), tuple(ops), tuple(comparators))
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITH_TEXT:
            raise bad(f"the operator {type(node.op).__name__}")
        sign = _ARITH_TEXT[type(node.op)]
        left = numeric(conv(node.left), node.left, sign)
        right = numeric(conv(node.right), node.right, sign)
        if sign == "**":
            if not isinstance(right, Const):
                raise refuse(f"the exponent of '**' must be a constant number (at most {MAX_EXPONENT} in "
                             "magnitude)", node.right)
            if not abs(right.value) <= MAX_EXPONENT:
                raise refuse(f"the exponent {_show(right.value)} of '**' is over the limit of {MAX_EXPONENT} in "
                             "magnitude", node.right)
        return _fold(Arith(sign, left, right))
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in ACTION_FUNCS:
            # propensity(<action>) / value(<action>): a name the caller provides, like a feature
            if node.keywords or len(node.args) != 1 or not isinstance(node.args[0], ast.Name):
                raise refuse(f"{node.func.id}() takes one action id, e.g. {node.func.id}(mortgage)")
            return Name(f"{node.func.id}({node.args[0].id})")
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            raise bad("a call to anything but min, max, abs, propensity(<action>), value(<action>)")
        if node.keywords:
            raise bad("keyword arguments")
        args = tuple(numeric(conv(a), a, node.func.id) for a in node.args)
        if not args or (node.func.id == "abs" and len(args) != 1) or (node.func.id != "abs" and len(args) < 2):
            raise bad(f"{node.func.id}() with {len(args)} argument(s)")
        return _fold(Func(node.func.id, args))
    raise bad(f"{type(node).__name__}")
