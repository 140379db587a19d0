"""GSM8K -> PAL programs (gsm8k_pal): conversion, safe execution, counts, loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from smartfed.data import DATA_DIR_ENV, load_examples, resolve_split_file
from smartfed.data.arith import ArithmeticEvalError
from smartfed.data.sets.gsm8k_pal import (
    PAL_INSTRUCTION,
    PalConversion,
    convert_gsm8k_to_pal,
    execute_pal_program,
    pal_prompt,
)
from smartfed.errors import ConfigError

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}
NATALIA_PROGRAM = (
    "def solution():\n"
    '    """Natalia sold clips to 48 of her friends in April, and then she sold half as many '
    'clips in May. How many clips did Natalia sell altogether in April and May?"""\n'
    "    v1 = 48 / 2\n"
    "    v2 = 48 + v1\n"
    "    return v2"
)


def _record(question: str, answer: str) -> dict[str, str]:
    return {"question": question, "answer": answer}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def test_hand_written_record_converts_to_the_expected_program() -> None:
    conversion = convert_gsm8k_to_pal([NATALIA])
    assert (conversion.total, conversion.kept) == (1, 1)
    example = conversion.examples[0]
    assert example.prompt == pal_prompt(NATALIA["question"])
    assert example.prompt.endswith("\n\n" + PAL_INSTRUCTION)
    assert example.response == f"```python\n{NATALIA_PROGRAM}\n```"
    assert example.meta == {"answer": 72, "source": "gsm8k_pal"}
    assert execute_pal_program(NATALIA_PROGRAM) == 72


def test_notation_in_notes_is_normalized() -> None:
    record = _record(
        "A shop sells 1,000 pens at $.5 each and gives 50% of the money to charity. "
        "How much is left?",
        "<<1,000*.5=500>>500 dollars.\n<<50%*500=250>>250 to charity.\n"
        "<<500-250=250>>250 left.\n#### 250",
    )
    conversion = convert_gsm8k_to_pal([record])
    assert conversion.kept == 1
    program = conversion.examples[0].response
    assert "v1 = 1000 * 0.5" in program
    assert "v2 = 50 / 100 * v1" in program
    assert "v3 = v1 - v2" in program


def test_numbers_given_in_the_question_are_not_rewritten() -> None:
    record = _record(
        "Tom has 6 apples and buys 6 more. He eats 2. How many are left?",
        "<<6+6=12>>12 apples.\n<<12-2=10>>10 left.\n#### 10",
    )
    program = convert_gsm8k_to_pal([record]).examples[0].response
    assert "v1 = 6 + 6" in program
    assert "v2 = v1 - 2" in program


def test_wrong_note_is_dropped_and_counted() -> None:
    wrong = _record("What is 2+2?", "2+2=<<2+2=5>>5\n#### 5")
    conversion = convert_gsm8k_to_pal([NATALIA, wrong])
    assert (conversion.total, conversion.kept, conversion.wrong_answer) == (2, 1, 1)
    assert conversion.survival_rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    "note",
    [
        "<<2+=4>>",
        "<<just text>>",
        "<<__import__('os').system('true')=0>>",
        "<<9**9**9=1>>",
        "<<7//2=3>>",
        "<<1/0=1>>",
    ],
)
def test_malformed_or_unsafe_notes_fail_evaluation(note: str) -> None:
    conversion = convert_gsm8k_to_pal([_record("Q?", f"A {note} B\n#### 3")])
    assert (conversion.kept, conversion.failed_eval) == (0, 1)


def test_survival_counts_add_up() -> None:
    records = [
        NATALIA,
        _record("No notes?", "Just reasoning.\n#### 3"),
        _record("Bad note?", "<<abc>>\n#### 3"),
        _record("Wrong?", "<<1+1=2>>\n#### 3"),
        _record("Right?", "<<1+2=3>>\n#### 3"),
    ]
    conversion = convert_gsm8k_to_pal(records)
    assert isinstance(conversion, PalConversion)
    assert (
        conversion.total,
        conversion.no_notes,
        conversion.failed_eval,
        conversion.wrong_answer,
        conversion.kept,
    ) == (5, 1, 1, 1, 2)
    assert conversion.total == (
        conversion.no_notes + conversion.failed_eval + conversion.wrong_answer + conversion.kept
    )
    assert conversion.survival_rate == pytest.approx(2 / 5)


def test_missing_final_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="####"):
        convert_gsm8k_to_pal([_record("Q?", "<<1+1=2>>")])


@pytest.mark.parametrize(
    "program",
    [
        "import os\ndef solution():\n    return 1",
        "def solution():\n    import os\n    return 1",
        "def solution():\n    return __import__('os').getpid()",
        "def solution():\n    x = open('f')\n    return 1",
        "def solution():\n    for i in range(3):\n        pass\n    return 1",
        "def solution():\n    x = 1",
        "def solution(a):\n    return a",
        "def other():\n    return 1",
        "@staticmethod\ndef solution():\n    return 1",
        "def solution():\n    return y",
        "def solution():\n    x, y = 1, 2\n    return x",
        "def solution():\n    exec('1')\n    return 1",
        "def solution(:\n",
    ],
)
def test_execute_refuses_anything_but_straight_line_arithmetic(program: str) -> None:
    with pytest.raises(ArithmeticEvalError):
        execute_pal_program(program)


def test_execute_runs_docstring_assignments_and_return() -> None:
    program = 'def solution():\n    """Q."""\n    a = 3\n    b = a * 2.5\n    return b - 1'
    assert execute_pal_program(program) == pytest.approx(6.5)


def test_docstring_quotes_are_escaped() -> None:
    question = 'He said """hi""" and \\ left "now"'
    record = _record(question, "<<1+2=3>>\n#### 3")
    program = convert_gsm8k_to_pal([record]).examples[0].response
    assert execute_pal_program(program.removeprefix("```python\n").removesuffix("\n```")) == 3


def test_loader_logs_counts_and_reports_bad_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gsm8k" / "train.jsonl"
    path.parent.mkdir()
    lines = [NATALIA, _record("Wrong?", "<<1+1=2>>\n#### 3")]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="smartfed.data.sets.gsm8k_pal"):
        examples = load_examples("gsm8k_pal", "train", data_dir=tmp_path)
    assert len(examples) == 1
    assert "kept 1 of 2" in caplog.text

    path.write_text(json.dumps({"question": "Q?", "answer": "no final line"}) + "\n")
    with pytest.raises(ConfigError, match=r"train\.jsonl:1: field 'answer'"):
        load_examples("gsm8k_pal", "train", data_dir=tmp_path)
    path.write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(ConfigError, match=r"train\.jsonl:1: missing field 'answer'"):
        load_examples("gsm8k_pal", "train", data_dir=tmp_path)


def test_bundled_gsm8k_converts() -> None:
    assert resolve_split_file("gsm8k_pal", "train").origin == "bundled"
    train = load_examples("gsm8k_pal", "train")
    test = load_examples("gsm8k_pal", "test")
    assert (len(train), len(test)) == (474, 117)


@pytest.mark.parametrize(
    ("split", "counts"),
    [("train", (7473, 95, 2, 377, 6999)), ("test", (1319, 18, 0, 93, 1208))],
)
def test_full_gsm8k_survival(split: str, counts: tuple[int, ...], needs_data: Path) -> None:
    records = [
        json.loads(line)
        for line in (needs_data / "gsm8k" / f"{split}.jsonl").read_text().splitlines()
    ]
    conversion = convert_gsm8k_to_pal(records)
    got = (
        conversion.total,
        conversion.no_notes,
        conversion.failed_eval,
        conversion.wrong_answer,
        conversion.kept,
    )
    assert got == counts
    assert sum(got[1:]) == got[0]
    examples = load_examples("gsm8k_pal", split, data_dir=needs_data)
    assert len(examples) == counts[-1]
    for example in examples[:200]:
        program = example.response.removeprefix("```python\n").removesuffix("\n```")
        assert execute_pal_program(program) == pytest.approx(example.meta["answer"], abs=1e-4)
