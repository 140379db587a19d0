"""Target sets: built from the full data exactly as shipped, disjoint and fixed splits, no leak
into training or tuning data, and the reference answers really are the benchmark's answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smartfed.data import load_examples
from smartfed.data.arith import evaluate, is_close
from smartfed.data.sets.gsm8k_pal import execute_pal_program
from smartfed.data.sets.gsm_hard_gsm8k_pal import changed_number, hard_programs
from smartfed.data.sets.mgsm_zh_math23k import program_equation
from smartfed.data.targets import TARGETS, build_files, target_build_report, target_dev_sources
from smartfed.data.tasks import TASKS

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(),
    reason=f"needs the full data in {SHARED_DATA}",
)


def _keys(examples) -> set[str]:
    return {e.prompt for e in examples}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_splits_are_disjoint_counted_and_documented(name: str) -> None:
    dev, test = load_examples(name, "dev"), load_examples(name, "test")
    report = target_build_report(name)
    assert (len(dev), len(test)) == (report["dev"], report["test"])
    assert report["kept"] == report["dev"] + report["test"] + report["unused"]
    assert report["source_items"] == report["kept"] + sum(report["skipped"].values())
    assert not _keys(dev) & _keys(test)
    assert len({e.meta["gsm8k_index"] for e in dev + test}) == len(dev) + len(test)


def test_the_paper_tasks_name_their_target_sets() -> None:
    assert TASKS["cn_math"].target_dataset == "mgsm_zh_math23k"
    assert TASKS["math_code"].target_dataset == "gsm_hard_gsm8k_pal"
    assert len(load_examples("mgsm_zh_math23k", "dev")) == 64
    assert len(load_examples("gsm_hard_gsm8k_pal", "dev")) == 128
    assert len(load_examples("gsm_hard_gsm8k_pal", "test")) == 256


def test_splits_are_the_same_in_another_process() -> None:
    code = (
        "import json; from smartfed.data import load_examples; "
        "print(json.dumps({n: [e.meta['gsm8k_index'] for e in load_examples(n, s)] "
        "for n in ('mgsm_zh_math23k', 'gsm_hard_gsm8k_pal') for s in ('dev', 'test')}))"
    )
    other = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    for name in ("mgsm_zh_math23k", "gsm_hard_gsm8k_pal"):
        assert other[name] == [e.meta["gsm8k_index"] for e in load_examples(name, "test")]


def test_mgsm_references_evaluate_to_the_answer() -> None:
    for example in load_examples("mgsm_zh_math23k", "test"):
        lines = example.response.split("\n")
        assert lines[0].startswith("列式：x=") and lines[-1].startswith("答案是 ")
        value = evaluate(lines[0].removeprefix("列式：x=").replace("^", "**"))
        assert is_close(value, example.meta["answer"])


def test_gsm_hard_programs_return_the_target() -> None:
    for example in load_examples("gsm_hard_gsm8k_pal", "dev"):
        program = example.response.removeprefix("```python\n").removesuffix("\n```")
        assert is_close(execute_pal_program(program), example.meta["answer"])
        assert program.split("\n")[1].strip().startswith('"""')


def test_inlined_equation_keeps_precedence() -> None:
    program = "def solution():\n    v1 = 3 - 2\n    v2 = 10 - v1\n    v3 = v2 * 4\n    return v3"
    assert program_equation(program) == "(10-(3-2))*4"


def test_changed_number_alignment() -> None:
    assert changed_number("She eats four eggs.", "She eats 4933828 eggs.") == (4, 4933828)
    assert changed_number("3 sprints 3 times", "9 sprints 9 times") == (3, 9)
    assert changed_number("3 sprints 3 times", "9 sprints 8 times") is None
    assert changed_number("3 sprints", "3 sprints") is None  # unchanged: not a GSM-Hard item


def test_hard_programs_try_every_choice_of_literals() -> None:
    # "2 bolts and half that much": only the first 2 is the changed number.
    base = 'def solution():\n    """q"""\n    v1 = 2 / 2\n    v2 = 2 + v1\n    return v2'
    programs = list(hard_programs(base, "Q", 2, 10))
    assert len(programs) == 7  # every non-empty subset of 3 literals
    results = [execute_pal_program(p) for p in programs]
    assert 15 in results  # 10 / 2 + 10


@needs_shared
def test_no_target_test_item_is_in_training_or_tuning_data() -> None:
    """GSM-Hard and MGSM are GSM8K test questions: none may be in any training split, nor in
    the target dev slice; math_code's in-distribution test leaves the dev questions out."""
    gsm8k_train = {r["question"].strip() for r in map(json.loads, _lines("gsm8k/train.jsonl"))}
    test_lines = list(map(json.loads, _lines("gsm8k/test.jsonl")))
    for name in TARGETS:
        dev, test = load_examples(name, "dev"), load_examples(name, "test")
        test_questions = {test_lines[e.meta["gsm8k_index"]]["question"].strip() for e in test}
        assert not test_questions & gsm8k_train
        assert not {e.meta["gsm8k_index"] for e in dev} & {e.meta["gsm8k_index"] for e in test}
    excluded = target_dev_sources("gsm_hard_gsm8k_pal")
    in_distribution = _keys(load_examples("gsm8k_pal", "test", data_dir=SHARED_DATA))
    # 126 of the 128 dev questions are gsm8k_pal test items (2 have no gsm8k_pal program).
    assert len(excluded & in_distribution) == 126
    assert target_dev_sources("mgsm_zh_math23k") == set()  # Chinese prompts: no overlap


@needs_shared
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_rebuilt_from_the_full_data_equals_the_shipped_files(name: str) -> None:
    spec = TARGETS[name]
    for file, text in build_files(spec, SHARED_DATA).items():
        assert (spec.folder / file).read_text(encoding="utf-8") == text, file


def _lines(relative: str) -> list[str]:
    return (SHARED_DATA / relative).read_text(encoding="utf-8").splitlines()
