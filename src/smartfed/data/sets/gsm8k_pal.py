"""``gsm8k_pal``: GSM8K as PAL programs built from its ``<<expr=result>>`` calculator notes.

Each GSM8K solution carries calculator notes (``48/2 = <<48/2=24>>24``). For every note, in
order, the program gets one assignment ``v<i> = <expr>``; it returns the last one::

    def solution():
        \"\"\"Natalia sold clips to 48 of her friends in April, ...\"\"\"
        v1 = 48 / 2
        v2 = 48 + v1
        return v2

A number in a note that equals the stated result of an earlier note is written as that note's
variable (``48 + v1`` above), so the program reads like the computation. This is only done when
the earlier variable's computed value equals its stated (possibly rounded) result, when the
number does not also appear in the question (so it is not a given quantity) and when it is not
one of :data:`UNIT_CONSTANTS` (1, 2, 10, 100, 1000: usually "half", "double", "percent"); the
value of the program never changes by it.

Expressions are read with the safe arithmetic evaluator (:mod:`smartfed.data.arith`: numbers,
``+ - * / **``, parentheses; ``1,000`` and ``50%`` are normalized) and printed back with
``ast.unparse`` (``3*.5`` becomes ``3 * 0.5``). The finished program is then run by
:func:`execute_pal_program`, which walks the program's syntax tree and accepts only
``def solution():``, a docstring, ``name = <arithmetic>`` and ``return <arithmetic>``; nothing is
ever passed to ``exec``. A program is **kept** only if its result matches the gold ``#### N``
answer within 1e-6 relative or 1e-4 absolute. Records are otherwise dropped and counted
(:class:`PalConversion`): ``no_notes`` (the solution has no calculator note), ``failed_eval`` (a
note is malformed or its expression cannot be evaluated), ``wrong_answer`` (the last note's value
is not the gold answer, e.g. the final step was done without a note).

On the full published GSM8K this keeps 6,999 of 7,473 train records (93.7 %; 95 have
no notes, 2 have a note with floor division ``//``, which the evaluator does not accept, and 377
give a wrong answer) and 1,208 of 1,319 test records (91.6 %; 18 without notes, 0, 93 wrong). The
counts are logged (``logging.info``) whenever a split is loaded.

The prompt is the question followed by :data:`PAL_INSTRUCTION` (:func:`pal_prompt`; evaluators
reuse it for GSM-Hard), the response is the program in a fenced ```` ```python ```` block.
``meta``: ``answer`` (the gold answer, ``int``; ``float`` if not integral), ``source``
(``"gsm8k_pal"``).
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.data.arith import (
    ArithmeticEvalError,
    Number,
    evaluate,
    evaluate_node,
    is_close,
    normalize_expression,
    parse_expression,
)
from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import jsonl_records, register_dataset, require_field
from smartfed.data.sets.gsm8k import FINAL_LINE, parse_number
from smartfed.data.sets.gsm8k import HUB_ID as GSM8K_HUB_ID
from smartfed.data.sets.gsm8k import SPLIT_FILES as GSM8K_SPLIT_FILES
from smartfed.errors import ConfigError

logger = logging.getLogger(__name__)

PAL_INSTRUCTION = "Write a Python function solution() that returns the answer."
NOTE = re.compile(r"<<([^<>]*)>>")
QUESTION_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
UNIT_CONSTANTS = frozenset({1, 2, 10, 100, 1000})
MAX_PROGRAM_CHARS = 100_000
MAX_STATEMENTS = 1000


def pal_prompt(question: str) -> str:
    """The user prompt of a PAL example: the question, a blank line, :data:`PAL_INSTRUCTION`."""
    return f"{question.strip()}\n\n{PAL_INSTRUCTION}"


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


@dataclass
class PalConversion:
    """The kept examples of :func:`convert_gsm8k_to_pal` and why the others were dropped."""

    examples: list[Example] = field(default_factory=list)
    total: int = 0
    no_notes: int = 0
    failed_eval: int = 0
    wrong_answer: int = 0

    @property
    def kept(self) -> int:
        return len(self.examples)

    @property
    def survival_rate(self) -> float:
        return self.kept / self.total if self.total else 0.0

    def summary(self) -> str:
        return (
            f"kept {self.kept} of {self.total} ({100 * self.survival_rate:.1f}%); dropped "
            f"{self.no_notes} without calculator notes, {self.failed_eval} whose notes do not "
            f"evaluate, {self.wrong_answer} whose program gives a wrong answer"
        )


class ProgramDropped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "no_notes", "failed_eval" or "wrong_answer"


# --------------------------------------------------------------------------------------------
# Running a generated program


def execute_pal_program(program: str) -> Number:
    """Result of a straight-line arithmetic ``def solution():`` program, without ``exec``.

    Accepted: one function ``solution`` without parameters or decorators whose body is an
    optional docstring, assignments ``name = <arithmetic>`` and a final ``return
    <arithmetic>``; expressions may use the names assigned before them. Anything else raises
    :class:`~smartfed.data.arith.ArithmeticEvalError`.
    """
    if len(program) > MAX_PROGRAM_CHARS:
        raise ArithmeticEvalError(f"program longer than {MAX_PROGRAM_CHARS} characters")
    try:
        module = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ArithmeticEvalError(f"not a Python program ({exc})") from None
    if len(module.body) != 1 or not isinstance(module.body[0], ast.FunctionDef):
        raise ArithmeticEvalError("the program must be exactly one function definition")
    function = module.body[0]
    arguments = function.args
    if (
        function.name != "solution"
        or function.decorator_list
        or arguments.posonlyargs
        or arguments.args
        or arguments.vararg
        or arguments.kwonlyargs
        or arguments.kwarg
    ):
        raise ArithmeticEvalError("expected 'def solution():' without parameters or decorators")
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if not isinstance(body[0].value.value, str):
            raise ArithmeticEvalError("only a docstring may stand alone in the body")
        body = body[1:]
    if len(body) > MAX_STATEMENTS:
        raise ArithmeticEvalError(f"more than {MAX_STATEMENTS} statements")
    names: dict[str, Number] = {}
    for statement in body:
        if isinstance(statement, ast.Return):
            if statement.value is None:
                raise ArithmeticEvalError("'return' without a value")
            return evaluate_node(statement.value, names)
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            names[statement.targets[0].id] = evaluate_node(statement.value, names)
            continue
        raise ArithmeticEvalError(
            f"line {statement.lineno}: only 'name = <arithmetic>' and 'return' are allowed"
        )
    raise ArithmeticEvalError("the function has no 'return'")


# --------------------------------------------------------------------------------------------
# Building programs


def _docstring(question: str) -> str:
    text = question.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    return f'"""{text}"""'


def _question_numbers(question: str) -> set[float]:
    return {float(match.replace(",", "")) for match in QUESTION_NUMBER.findall(question)}


class _UseEarlierResults(ast.NodeTransformer):
    """Rewrite number literals that equal an earlier note's result into that note's variable."""

    def __init__(self, earlier: list[tuple[str, float, Number]], given: set[float]) -> None:
        self.earlier = earlier  # (variable, stated result, computed value), oldest first
        self.given = given

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return node
        if value in self.given or value in UNIT_CONSTANTS:
            return node
        for name, stated, computed in reversed(self.earlier):
            if stated == value and abs(computed - stated) <= 1e-9 * max(1.0, abs(stated)):
                return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)
        return node


def _stated_result(text: str) -> float | None:
    try:
        return float(evaluate(text, percent=True))
    except ArithmeticEvalError:
        return None


def build_pal_program(question: str, solution: str) -> str:
    """The PAL program of one GSM8K solution.

    Raises ProgramDropped("no_notes" / "failed_eval").
    """
    notes = NOTE.findall(solution)
    if not notes:
        raise ProgramDropped("no_notes")
    given = _question_numbers(question)
    earlier: list[tuple[str, float, Number]] = []
    names: dict[str, Number] = {}
    lines = ["def solution():", f"    {_docstring(question)}"]
    for number, note in enumerate(notes, start=1):
        expression, sep, result = note.rpartition("=")
        if not sep or not expression.strip():
            raise ProgramDropped("failed_eval")
        try:
            tree = parse_expression(normalize_expression(expression, percent=True))
            tree = _UseEarlierResults(earlier, given).visit(tree)
            value = evaluate_node(tree, names)
        except ArithmeticEvalError:
            raise ProgramDropped("failed_eval") from None
        name = f"v{number}"
        names[name] = value
        stated = _stated_result(result)
        earlier.append((name, stated if stated is not None else float(value), value))
        lines.append(f"    {name} = {ast.unparse(tree)}")
    lines.append(f"    return v{len(notes)}")
    return "\n".join(lines)


def gsm8k_gold_answer(solution: str) -> int | float:
    """N of the ``#### N`` line; ValueError if there is none or it is not a number."""
    match = FINAL_LINE.search(solution)
    if match is None:
        raise ValueError("the answer has no final '#### N' line")
    return parse_number(match.group("answer"))


def convert_gsm8k_to_pal(records: Iterable[Mapping[str, str]]) -> PalConversion:
    """PAL examples of GSM8K records (``{"question", "answer"}``), keeping only correct programs.

    A record without a ``#### N`` line raises ValueError (the loader reports it with its line).
    """
    conversion = PalConversion()
    for record in records:
        conversion.total += 1
        question, solution = record["question"], record["answer"]
        gold = gsm8k_gold_answer(solution)
        try:
            program = build_pal_program(question, solution)
            try:
                result = execute_pal_program(program)
            except ArithmeticEvalError:
                raise ProgramDropped("failed_eval") from None
            if not is_close(result, gold, rel_tol=1e-6, abs_tol=1e-4):
                raise ProgramDropped("wrong_answer")
        except ProgramDropped as dropped:
            setattr(conversion, dropped.reason, getattr(conversion, dropped.reason) + 1)
            continue
        conversion.examples.append(
            Example(
                prompt=pal_prompt(question),
                response=fenced(program),
                meta={"answer": gold, "source": "gsm8k_pal"},
            )
        )
    return conversion


def read_gsm8k_pal_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """PAL examples of GSM8K ``(location, record)`` pairs (file lines or hub rows)."""
    kept: list[dict[str, str]] = []
    for where, record in records:
        question = require_field(record, "question", where, None, kind=str)
        answer = require_field(record, "answer", where, None, kind=str)
        try:
            gsm8k_gold_answer(answer)
        except ValueError as exc:
            raise ConfigError(f"{where}: field 'answer': {exc}") from None
        kept.append({"question": question, "answer": answer})
    conversion = convert_gsm8k_to_pal(kept)
    logger.info("gsm8k_pal %s: %s", split, conversion.summary())
    yield from conversion.examples


@register_dataset(
    "gsm8k_pal",
    splits=GSM8K_SPLIT_FILES,
    description="GSM8K as PAL programs built from its calculator notes (checked by running them)",
    hub=HubSource(
        GSM8K_HUB_ID,
        read=read_gsm8k_pal_records,
        config="main",
        splits={"train": "train", "test": "test"},
    ),
    meta_fields=("answer", "source"),
    split_sizes={"train": 6999, "test": 1208},  # of 7,473 / 1,319 GSM8K records (see above)
)
def read_gsm8k_pal(path: Path, split: str) -> Iterator[Example]:
    return read_gsm8k_pal_records(jsonl_records(path), split)
