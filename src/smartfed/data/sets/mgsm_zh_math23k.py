"""``mgsm_zh_math23k``: MGSM-zh in Math23K's target format, the target set of ``cn_math``.

MGSM's 250 items are GSM8K test items 0-249 translated (the English file matches GSM8K's
questions exactly, and the answers match). MGSM has no worked solutions, so each item's
reference is built from the matching GSM8K solution's calculator notes (``<<48/2=24>>``): the
notes are turned into ``gsm8k_pal``'s straight-line program (:func:`build_pal_program`), then
every variable is replaced by the expression that defines it, giving one equation for the last
step with the intermediate results inlined. The response is then written as Math23K's targets
are (:func:`smartfed.data.sets.math23k.math23k_target`)::

    列式：x=(48+48/2)
    计算得 x=72。
    答案是 72。

An item is **kept** only if its equation evaluates to MGSM's answer; the others are counted by
reason in ``build.json``: ``no_notes`` (the solution has no calculator note), ``failed_eval``
(a note does not evaluate), ``wrong_answer`` (the last note is not the answer, e.g. the final
step was done without a note), ``question_mismatch`` (the English MGSM question is not GSM8K's).
Splits: 64 items ``dev``, every other kept item ``test`` (seeded, see
:mod:`smartfed.data.targets`).

``meta``: ``answer`` (MGSM's answer), ``gsm8k_index`` (the GSM8K test line, 0-based),
``source`` (``"mgsm_zh_math23k"``).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

from smartfed.data.arith import ArithmeticEvalError, evaluate, format_number, is_close
from smartfed.data.examples import Example
from smartfed.data.registry import jsonl_records
from smartfed.data.sets.gsm8k_pal import ProgramDropped, build_pal_program
from smartfed.data.sets.math23k import math23k_target
from smartfed.data.sets.mgsm import mgsm_tsv_records, parse_answer
from smartfed.data.targets import TargetBuild, TargetSpec, register_target

NAME = "mgsm_zh_math23k"
MGSM_ITEMS = 250


class _Inline(ast.NodeTransformer):
    def __init__(self, definitions: dict[str, ast.expr]) -> None:
        self.definitions = definitions

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.definitions:
            raise ArithmeticEvalError(f"unknown name {node.id}")
        return copy.deepcopy(self.definitions[node.id])


def program_equation(program: str) -> str:
    """The last assignment of a ``gsm8k_pal`` program with every earlier variable inlined,
    written as Math23K writes equations (no spaces, ``^`` for powers)."""
    function = ast.parse(program).body[0]
    assert isinstance(function, ast.FunctionDef)
    definitions: dict[str, ast.expr] = {}
    last: ast.expr | None = None
    for statement in function.body:
        if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
            last = _Inline(definitions).visit(statement.value)
            definitions[statement.targets[0].id] = last
    if last is None:
        raise ArithmeticEvalError("the program assigns nothing")
    return ast.unparse(last).replace(" ", "").replace("**", "^")


def build_mgsm_zh_math23k(data_dir: Path) -> TargetBuild:
    """Kept items of MGSM-zh with Math23K-style references, from the full data in
    ``data_dir`` (``gsm8k/test.jsonl`` and ``mgsm/mgsm_{en,zh}.tsv``)."""
    gsm8k = [record for _, record in jsonl_records(data_dir / "gsm8k" / "test.jsonl")]
    english = [r for _, r in mgsm_tsv_records(data_dir / "mgsm" / "mgsm_en.tsv")]
    chinese = [r for _, r in mgsm_tsv_records(data_dir / "mgsm" / "mgsm_zh.tsv")]
    built = TargetBuild(NAME)
    for index in range(MGSM_ITEMS):
        built.total += 1
        source = gsm8k[index]
        if english[index]["question"].strip() != source["question"].strip():
            built.skip("question_mismatch")
            continue
        answer = parse_answer(chinese[index]["answer"])
        try:
            equation = program_equation(build_pal_program(source["question"], source["answer"]))
            value = evaluate(equation.replace("^", "**"))
        except ProgramDropped as dropped:
            built.skip(dropped.reason)
            continue
        except ArithmeticEvalError:
            built.skip("failed_eval")
            continue
        if not is_close(value, answer, rel_tol=1e-6, abs_tol=1e-4):
            built.skip("wrong_answer")
            continue
        built.examples.append(
            Example(
                prompt=chinese[index]["question"].strip(),
                response=math23k_target(f"x={equation}", format_number(answer)),
                meta={"answer": answer, "gsm8k_index": index, "source": NAME},
            )
        )
    return built


register_target(
    TargetSpec(
        name=NAME,
        build=build_mgsm_zh_math23k,
        dev_size=64,
        test_size=None,
        description="MGSM-zh with Math23K-style equation targets built from GSM8K's notes "
        "(cn_math's target set)",
    ),
    meta_fields=("answer", "gsm8k_index", "source"),
)
