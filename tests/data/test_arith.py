"""The safe arithmetic evaluator shared by Math23K and GSM8K-PAL."""

from __future__ import annotations

import time

import pytest

from smartfed.data.arith import (
    ArithmeticEvalError,
    evaluate,
    format_number,
    normalize_expression,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("48/2", 24.0),
        ("48 + 24", 72),
        ("3*.5", 1.5),
        ("1/2", 0.5),
        ("-3 + +4", 1),
        ("(11-1)*2", 20),
        ("2**10", 1024),
        ("2**-1", 0.5),
        ("1,000*2", 2000),
        ("007 + 1", 8),
        ("1.05 * 100", 105.0),
    ],
)
def test_evaluates_arithmetic(text: str, expected: float) -> None:
    assert evaluate(text) == pytest.approx(expected)


def test_math23k_notation() -> None:
    assert evaluate("[50-12*(50-30)/10]/(1-50%)", percent=True) == pytest.approx(52)
    assert evaluate("3.14*2^2", percent=True) == pytest.approx(12.56)
    assert evaluate("((7)/(15))") == pytest.approx(7 / 15)
    assert evaluate("112.5%", percent=True) == pytest.approx(1.125)
    assert normalize_expression("50%", percent=True) == "(50/100)"
    # Without percent=True a % sign is modulo, which is refused.
    with pytest.raises(ArithmeticEvalError):
        evaluate("50%*2")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "os.system",
        "(1).real",
        "x + 1",
        "abs(-1)",
        "[1, 2]",
        "(1, 2)",
        "'a' * 3",
        "lambda: 1",
        "1 if 1 else 2",
        "1 < 2",
        "7 // 2",
        "True + 1",
        "1j * 2",
        "a = 1",
        "",
        "1 +",
    ],
)
def test_refuses_everything_but_arithmetic(text: str) -> None:
    with pytest.raises(ArithmeticEvalError):
        evaluate(text)


def test_names_only_from_the_given_mapping() -> None:
    assert evaluate("v1 * 2", {"v1": 21}) == 42
    with pytest.raises(ArithmeticEvalError, match="unknown name"):
        evaluate("v2 * 2", {"v1": 21})
    with pytest.raises(ArithmeticEvalError):
        evaluate("__builtins__", {"v1": 1})


@pytest.mark.parametrize(
    "text",
    ["9**9**9", "10**101", "2**1000000", "(10**50) * (10**60)", "1e308 * 10", "(-8)**0.5", "0**-1"],
)
def test_refuses_huge_or_undefined_results_quickly(text: str) -> None:
    start = time.monotonic()
    with pytest.raises(ArithmeticEvalError):
        evaluate(text)
    assert time.monotonic() - start < 1.0


def test_refuses_division_by_zero_deep_nesting_and_long_text() -> None:
    with pytest.raises(ArithmeticEvalError, match="division by zero"):
        evaluate("1/(2-2)")
    with pytest.raises(ArithmeticEvalError):
        evaluate("(" * 400 + "1" + ")" * 400)
    with pytest.raises(ArithmeticEvalError):
        evaluate("-" * 500 + "1")
    with pytest.raises(ArithmeticEvalError, match="longer than"):
        evaluate("1+" * 2000 + "1")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (20, "20"),
        (20.0, "20"),
        (19.999999999999996, "20"),
        (-3.0, "-3"),
        (0.75, "0.75"),
        (6.7, "6.7"),
        (7 / 15, "0.4667"),
        (0.0571428571, "0.05714"),
        (19.75, "19.75"),
    ],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text
