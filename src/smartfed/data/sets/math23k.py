"""Math23K (MWPToolkit's split): Chinese elementary-school maths word problems with equations.

Files are JSON lists of ``{"id", "original_text", "segmented_text", "equation", "ans"}``; the
equation is written ``x=...`` (``x=(11-1)*2``) and ``ans`` is a string: a number (``"20"``,
``"2.5"``), a fraction (``"((7)/(15))"``), a mixed number (``"19((3)/(4))"`` = 19 3/4) or a
percentage (``"25%"`` = 0.25). The splits are MWPToolkit's random split (the data folder has no
``trainset.json``): ``train`` = ``math23k/validset.json`` (2,316 problems), ``test`` =
``math23k/testset.json`` (2,317 problems).

The training target is built in Chinese from the equation and the answer::

    列式：x=(11-1)*2
    计算得 x=20。
    答案是 20。

The last line is always exactly ``答案是 N。`` (evaluators extract it). N is the answer written
by :func:`smartfed.data.arith.format_number`: integers without ``.0``, other values with the
fewest decimals that represent them exactly, else rounded to 4 decimals (``7/15`` -> ``0.4667``).

Every record is checked: ``ans`` is parsed and the right-hand side of ``equation`` is evaluated
with the safe arithmetic evaluator (:mod:`smartfed.data.arith`; ``[ ]`` read as parentheses,
``^`` as power, ``N%`` as N/100). A record is **skipped**, and counted in a logged summary, when
its equation or answer cannot be evaluated or the two differ by more than 1e-4 (relative and
absolute). On MWPToolkit's published files this skips exactly **1** record, in ``test``: id
``"10431"`` (record 161), whose "equation" ``x=80千米/小时`` is a unit, not arithmetic (the
problem asks how to write a speed). So ``train`` has 2,316 examples and ``test`` 2,316; every
other equation reproduces its answer (269 test / 268 train answers are fractions, mixed numbers
or percentages, all parsed).

``meta``: ``answer`` (N as an ``int`` or ``float``, equal to the number on the last line),
``id`` (the Math23K id, a string), ``source`` (``"math23k"``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.arith import ArithmeticEvalError, evaluate, format_number, is_close
from smartfed.data.examples import Example
from smartfed.data.registry import register_dataset, require_field
from smartfed.data.sets.instruct import read_json_records

logger = logging.getLogger(__name__)

MIXED_NUMBER = re.compile(r"^\s*(\d+)\s*\(\(\s*(\d+)\s*\)\s*/\s*\(\s*(\d+)\s*\)\)\s*$")
ANSWER_TOLERANCE = 1e-4


def parse_answer(text: str | int | float) -> int | float:
    """Value of a Math23K ``ans``: number, ``((a)/(b))``, ``N((a)/(b))`` or ``N%``.

    ArithmeticEvalError if it is none of these.
    """
    if isinstance(text, bool):
        raise ArithmeticEvalError(f"not a number: {text!r}")
    if isinstance(text, int | float):
        return text
    mixed = MIXED_NUMBER.match(text)
    if mixed:
        whole, numerator, denominator = (int(group) for group in mixed.groups())
        if denominator == 0:
            raise ArithmeticEvalError(f"zero denominator in {text!r}")
        return whole + numerator / denominator
    return evaluate(text, percent=True)


def evaluate_equation(equation: str) -> int | float:
    """Value of the right-hand side of ``x=...``; ArithmeticEvalError if it is not arithmetic."""
    left, sep, right = equation.partition("=")
    if not sep or left.strip() != "x":
        raise ArithmeticEvalError(f"equation {equation!r} is not of the form x=...")
    return evaluate(right, percent=True)


def math23k_target(equation: str, answer: str) -> str:
    """The Chinese training target; its last line is ``答案是 {answer}。``."""
    return f"列式：{equation}\n计算得 x={answer}。\n答案是 {answer}。"


def math23k_example(record: Mapping[str, Any], where: str) -> Example | None:
    """The example of one record, or None when its equation does not reproduce its answer."""
    record_id = require_field(record, "id", where, None, kind=(str, int))
    text = require_field(record, "original_text", where, None, kind=str)
    equation = require_field(record, "equation", where, None, kind=str)
    raw_answer = require_field(record, "ans", where, None, kind=(str, int, float))
    try:
        gold = parse_answer(raw_answer)
        value = evaluate_equation(equation)
    except ArithmeticEvalError:
        return None
    if not is_close(value, gold, rel_tol=ANSWER_TOLERANCE, abs_tol=ANSWER_TOLERANCE):
        return None
    shown = format_number(gold)
    answer: int | float = int(shown) if re.fullmatch(r"-?\d+", shown) else float(shown)
    return Example(
        prompt=text.strip(),
        response=math23k_target(equation.strip(), shown),
        meta={"answer": answer, "id": str(record_id), "source": "math23k"},
    )


@register_dataset(
    "math23k",
    splits={"train": "math23k/validset.json", "test": "math23k/testset.json"},
    description="Math23K Chinese maths word problems, equation + answer targets (MWPToolkit)",
    meta_fields=("answer", "id", "source"),
    split_sizes={"train": 2316, "test": 2316},
)
def read_math23k(path: Path, split: str) -> Iterator[Example]:
    counts: Counter[str] = Counter()
    skipped_ids: list[str] = []
    for where, record in read_json_records(path):
        example = math23k_example(record, where)
        if example is None:
            counts["skipped"] += 1
            skipped_ids.append(str(record.get("id")))
            continue
        counts["kept"] += 1
        yield example
    if counts["skipped"]:
        logger.info(
            "math23k %s: kept %d, skipped %d whose equation does not reproduce the answer (ids %s)",
            split,
            counts["kept"],
            counts["skipped"],
            ", ".join(skipped_ids[:10]) + (" ..." if len(skipped_ids) > 10 else ""),
        )
