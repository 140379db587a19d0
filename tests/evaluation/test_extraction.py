"""Answer and code extraction from free-form generations."""

from __future__ import annotations

import pytest

from smartfed.evaluation.extraction import extract_code, extract_number, numbers_match


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Half is 24, so 48 + 24 = 72.\nThe answer is 72.", 72),
        ("The answer is 1,080.", 1080),
        ("#### -7", -7),
        ("Answer: $1,234.50", 1234.5),
        ("答案是 42。", 42),
        ("答案：１２", 12),  # full-width digits
        ("先算 3+4=7，再算 7*2=14，所以答案是14。", 14),
        ("答：共有 25 个苹果。", 25),
        ("一共 1，200 元", 1200),  # Chinese thousands separator
        ("He has 3/4 of the pie left", 0.75),
        ("The answer is 12 apples, since 5 + 7 = 12 and 40 were eaten", 12),  # marker wins
        ("5 + 7 = 12", 12),  # no marker: last number
        ("the answer is −3", -3),  # unicode minus
    ],
)
def test_numbers_are_extracted_in_english_and_chinese(text, expected):
    assert extract_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["no idea", "答案是多少呢", ""])
def test_no_number_gives_none(text):
    assert extract_number(text) is None
    assert not numbers_match(extract_number(text), 3)


def test_numbers_match_tolerates_float_formatting_only():
    assert numbers_match(72.0, 72)
    assert numbers_match(0.30000000000000004, 0.3)
    assert not numbers_match(72.5, 72)


def test_code_is_taken_from_the_first_fence_or_the_whole_text():
    fenced = "Sure!\n```python\ndef f():\n    return 1\n```\nDone. ```python\nx = 2\n```"
    assert extract_code(fenced) == "def f():\n    return 1"
    assert extract_code("```\nprint(1)\n```") == "print(1)"
    assert extract_code("```python\ndef g():\n    return 2") == "def g():\n    return 2"
    assert extract_code("def h(): return 3") == "def h(): return 3"
