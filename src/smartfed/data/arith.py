"""Safe arithmetic: evaluate ``+ - * / **`` expressions over numbers without ``eval``.

Used to check dataset arithmetic (Math23K equations, GSM8K calculator notes) and to run the PAL
programs built from those notes. The expression is parsed with :mod:`ast` and walked by hand;
only these nodes are accepted:

* number literals (``int`` / ``float``; not ``bool``, ``complex`` or strings);
* the binary operators ``+ - * / **`` (``/`` is true division) and unary ``-`` / ``+``;
* parentheses (implicit in the tree);
* names, only when the caller passes a ``names`` mapping that holds them (PAL variables).

Everything else (calls, attributes, subscripts, comparisons, ``//``, ``%`` as modulo, lambdas,
...) raises :class:`ArithmeticEvalError`, as do division by zero and results that are not finite.
Sizes are bounded so that no input can hang or exhaust memory: the text is at most
``MAX_EXPRESSION_CHARS`` characters and ``MAX_DEPTH`` nodes deep, ``**`` needs an exponent of at
most ``MAX_EXPONENT`` in absolute value, and any intermediate result above ``MAX_MAGNITUDE`` in
absolute value is refused (checked *before* a power is computed, so ``9**9**9`` is refused at
once).

:func:`normalize_expression` rewrites dataset notation into this grammar first: thousands
separators (``1,000``), leading zeros (``007``), ``[ ]`` brackets, ``^`` for power and, with
``percent=True``, percentages (``50%`` -> ``(50/100)``).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping

Number = int | float

MAX_EXPRESSION_CHARS = 2000
MAX_DEPTH = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")


class ArithmeticEvalError(ValueError):
    """The text is not a safe arithmetic expression, or its value cannot be computed."""


def normalize_expression(text: str, *, percent: bool = False) -> str:
    """Rewrite dataset notation into the evaluator's grammar (see the module docstring)."""
    text = text.strip().replace("[", "(").replace("]", ")").replace("^", "**")
    text = _THOUSANDS.sub("", text)
    text = _LEADING_ZEROS.sub("", text)
    if percent:
        text = _PERCENT.sub(r"(\1/100)", text)
    return text


def parse_expression(text: str) -> ast.expr:
    """The expression tree of ``text``; ArithmeticEvalError if it is not one Python expression."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ArithmeticEvalError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ArithmeticEvalError(f"not an arithmetic expression: {text!r} ({exc})") from None


def evaluate(
    text: str,
    names: Mapping[str, Number] | None = None,
    *,
    percent: bool = False,
) -> Number:
    """Value of arithmetic expression ``text`` (normalized first; see the module docstring)."""
    return evaluate_node(parse_expression(normalize_expression(text, percent=percent)), names)


def evaluate_node(node: ast.AST, names: Mapping[str, Number] | None = None) -> Number:
    """Value of an already parsed expression tree; refuses every node outside the grammar."""
    return _eval(node, names or {}, 0)


def _check(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithmeticEvalError("result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ArithmeticEvalError(f"intermediate result larger than {MAX_MAGNITUDE:g}")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ArithmeticEvalError(f"exponent {exponent!r} is larger than {MAX_EXPONENT}")
    if base == 0:
        if exponent < 0:
            raise ArithmeticEvalError("zero to a negative power")
        return 0 if exponent > 0 else 1
    if abs(exponent) * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ArithmeticEvalError(f"{base!r} ** {exponent!r} is too large")
    if base < 0 and not float(exponent).is_integer():
        raise ArithmeticEvalError("negative number to a fractional power")
    if isinstance(exponent, int) and exponent < 0:
        return float(base) ** exponent
    return base**exponent


def _eval(node: ast.AST, names: Mapping[str, Number], depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ArithmeticEvalError(f"expression nested deeper than {MAX_DEPTH}")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ArithmeticEvalError(f"not a number: {value!r}")
        return _check(value)
    if isinstance(node, ast.Name):
        if not isinstance(node.ctx, ast.Load) or node.id not in names:
            raise ArithmeticEvalError(f"unknown name {node.id!r}")
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _eval(node.operand, names, depth + 1)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _eval(node.left, names, depth + 1)
        right = _eval(node.right, names, depth + 1)
        op = node.op
        if isinstance(op, ast.Add):
            return _check(left + right)
        if isinstance(op, ast.Sub):
            return _check(left - right)
        if isinstance(op, ast.Mult):
            return _check(left * right)
        if isinstance(op, ast.Div):
            if right == 0:
                raise ArithmeticEvalError("division by zero")
            return _check(left / right)
        if isinstance(op, ast.Pow):
            return _check(_power(left, right))
        raise ArithmeticEvalError(f"operator {type(op).__name__} is not allowed")
    raise ArithmeticEvalError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def is_close(
    value: Number, target: Number, *, rel_tol: float = 1e-6, abs_tol: float = 1e-4
) -> bool:
    """Whether ``value`` matches ``target`` within the tolerances used to check dataset answers."""
    return math.isclose(value, target, rel_tol=rel_tol, abs_tol=abs_tol)


def format_number(value: Number, *, max_decimals: int = 4) -> str:
    """``20.0`` -> ``"20"``, ``0.75`` -> ``"0.75"``, ``7/15`` -> ``"0.4667"``.

    Integers (and floats within 1e-9 of one) are written without a decimal point; other values
    with the fewest decimals (at most ``max_decimals``) that represent them exactly, otherwise
    rounded to ``max_decimals`` decimals, or to 4 significant digits when that is more.
    """
    if isinstance(value, int):
        return str(value)
    nearest = round(value)
    if abs(value - nearest) <= 1e-9 * max(1.0, abs(value)):
        return str(int(nearest))
    decimals = max_decimals
    for places in range(1, max_decimals + 1):
        if abs(round(value, places) - value) <= 1e-9 * max(1.0, abs(value)):
            decimals = places
            break
    else:
        magnitude = math.floor(math.log10(abs(value)))
        decimals = max(max_decimals, 3 - magnitude)
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
