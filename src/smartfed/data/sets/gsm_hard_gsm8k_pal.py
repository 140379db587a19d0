"""``gsm_hard_gsm8k_pal``: GSM-Hard in ``gsm8k_pal``'s format, the target set of ``math_code``.

GSM-Hard is GSM8K's test set with one number of each question made larger; its own reference
programs are by another author (named variables, the *original* question in the docstring), so
their loss measures a style shift as much as a skill. Here each item gets the program that
``math_code`` trains on instead:

1. the GSM-Hard item is matched to its GSM8K test question by text (the docstring of its
   ``code`` field is the original question);
2. the changed number is found by aligning the two questions word by word: exactly one number
   (digits, or a number word such as ``four``) must have been replaced by one number, the same
   way wherever it occurs (items whose question did not change are skipped: they are GSM8K);
3. the GSM8K solution's ``gsm8k_pal`` program is built (:func:`build_pal_program`), the
   literals equal to the old number become the new one, and the docstring becomes the GSM-Hard
   question; a literal equal to the old number is not always that number (``2`` is also
   "half"), so every choice of which ones change is tried, the most changes first
   (:func:`hard_programs`);
4. the item is **kept** with the first such program that returns GSM-Hard's ``target`` (1e-6
   relative or 1e-4 absolute); when none does, it is skipped as ``wrong_answer``.

Skips are counted by reason in ``build.json``: ``no_gsm8k_match``, ``no_single_number_change``
(unchanged questions too), ``no_notes`` / ``failed_eval`` (no program could be built),
``wrong_answer``. Splits: 128
``dev`` and 256 ``test`` items (seeded, see :mod:`smartfed.data.targets`); the other kept items
are not used.

``meta``: ``answer`` (GSM-Hard's target), ``gsm8k_index`` (the GSM8K test line, 0-based),
``source_prompt`` (the ``gsm8k_pal`` prompt of the original GSM8K question: ``math_code``'s
in-distribution test leaves out the dev items' questions), ``source``
(``"gsm_hard_gsm8k_pal"``).
"""

from __future__ import annotations

import ast
import copy
import difflib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

from smartfed.data.arith import ArithmeticEvalError, Number, is_close
from smartfed.data.examples import Example
from smartfed.data.registry import jsonl_records
from smartfed.data.sets.gsm8k_pal import (
    ProgramDropped,
    _docstring,
    build_pal_program,
    execute_pal_program,
    fenced,
    pal_prompt,
)
from smartfed.data.targets import TargetBuild, TargetSpec, register_target

NAME = "gsm_hard_gsm8k_pal"
MAX_OCCURRENCES = 6  # literals equal to the old number that are tried (2^6 programs at most)
TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\w+|[^\w\s]")
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
TEENS = "fifteen sixteen seventeen eighteen nineteen twenty"
NUMBER_WORDS = {word: value for value, word in enumerate(f"{UNITS} {TEENS}".split())} | {
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "hundred": 100, "thousand": 1000, "dozen": 12,
}  # fmt: skip


def _number(token: str) -> Number | None:
    if NUMBER.fullmatch(token):
        value = float(token.replace(",", ""))
        return int(value) if value.is_integer() else value
    return NUMBER_WORDS.get(token.lower())


def changed_number(original: str, hard: str) -> tuple[Number, Number] | None:
    """(old, new) when ``hard`` is ``original`` with one number replaced by a number (in every
    place it occurs), else None."""
    before, after = TOKEN.findall(original), TOKEN.findall(hard)
    changes = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        a=before, b=after, autojunk=False
    ).get_opcodes():
        if tag == "equal":
            continue
        if tag != "replace" or i2 - i1 != 1 or j2 - j1 != 1 or not NUMBER.fullmatch(after[j1]):
            return None
        old, new = _number(before[i1]), _number(after[j1])
        if old is None or new is None:
            return None
        changes.add((old, new))
    return changes.pop() if len(changes) == 1 else None


class _Replace(ast.NodeTransformer):
    """Replace the literals equal to ``old`` whose position (counted over the whole program, in
    order) is in ``chosen``."""

    def __init__(self, old: Number, new: Number, chosen: frozenset[int], start: int) -> None:
        self.old, self.new, self.chosen, self.seen = old, new, chosen, start

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, int | float) and not isinstance(value, bool) and value == self.old:
            self.seen += 1
            if self.seen - 1 in self.chosen:
                return ast.copy_location(ast.Constant(self.new), node)
        return node


def hard_programs(program: str, question: str, old: Number, new: Number) -> Iterator[str]:
    """``program`` (a ``gsm8k_pal`` program) rewritten for the harder question: the docstring
    becomes ``question`` and ``old`` literals become ``new``. A literal equal to the old number
    is not always that number (``2`` may also be "half"), so every choice of which literals
    change is yielded, the most changes first."""
    lines = program.split("\n")
    header = [lines[0], f"    {_docstring(question)}"]
    body = [line.strip().partition(" = ") for line in lines[2:]]
    trees = [ast.parse(expression, mode="eval") if sep else None for _, sep, expression in body]
    counter = _Replace(old, new, frozenset(), 0)
    for tree in trees:
        if tree is not None:
            counter.visit(copy.deepcopy(tree))
    occurrences = range(min(counter.seen, MAX_OCCURRENCES))
    for size in range(len(occurrences), 0, -1):
        for chosen in itertools.combinations(occurrences, size):
            out, seen = list(header), 0
            for (name, _, _), tree, line in zip(body, trees, lines[2:], strict=True):
                if tree is None:
                    out.append(line)
                    continue
                replacer = _Replace(old, new, frozenset(chosen), seen)
                rewritten = replacer.visit(copy.deepcopy(tree))
                seen = replacer.seen
                out.append(f"    {name} = {ast.unparse(rewritten)}")
            yield "\n".join(out)


def _returns(program: str, target: float) -> bool:
    try:
        return is_close(execute_pal_program(program), target, rel_tol=1e-6, abs_tol=1e-4)
    except ArithmeticEvalError:
        return False


def build_gsm_hard_gsm8k_pal(data_dir: Path) -> TargetBuild:
    """Kept GSM-Hard items with ``gsm8k_pal`` programs, from the full data in ``data_dir``
    (``gsm8k/test.jsonl`` and ``gsm_hard/gsmhardv2.jsonl``)."""
    gsm8k = [record for _, record in jsonl_records(data_dir / "gsm8k" / "test.jsonl")]
    by_question = {record["question"].strip(): i for i, record in enumerate(gsm8k)}
    built = TargetBuild(NAME)
    for _, record in jsonl_records(data_dir / "gsm_hard" / "gsmhardv2.jsonl"):
        built.total += 1
        try:
            function = ast.parse(record["code"]).body[0]
            original = ast.get_docstring(function, clean=False) if function else None
        except (SyntaxError, IndexError, TypeError):
            original = None
        index = by_question.get((original or "").strip())
        if index is None:
            built.skip("no_gsm8k_match")
            continue
        source, hard_question = gsm8k[index], record["input"].strip()
        change = changed_number(source["question"], hard_question)
        if change is None:
            built.skip("no_single_number_change")
            continue
        try:
            base = build_pal_program(source["question"], source["answer"])
        except ProgramDropped as dropped:
            built.skip(dropped.reason)
            continue
        target = float(record["target"])
        program = next(
            (p for p in hard_programs(base, hard_question, *change) if _returns(p, target)), None
        )
        if program is None:
            built.skip("wrong_answer")
            continue
        built.examples.append(
            Example(
                prompt=pal_prompt(hard_question),
                response=fenced(program),
                meta={
                    "answer": float(record["target"]),
                    "gsm8k_index": index,
                    "source_prompt": pal_prompt(source["question"]),
                    "source": NAME,
                },
            )
        )
    return built


register_target(
    TargetSpec(
        name=NAME,
        build=build_gsm_hard_gsm8k_pal,
        dev_size=128,
        test_size=256,
        description="GSM-Hard with gsm8k_pal programs (the changed number substituted), "
        "math_code's target set",
    ),
    meta_fields=("answer", "gsm8k_index", "source_prompt", "source"),
)
