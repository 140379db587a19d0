"""User JSONL files with a field mapping, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.data import load_examples, load_jsonl
from smartfed.errors import ConfigError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _records(n: int) -> list[str]:
    return [json.dumps({"q": f"q{i}", "a": f"a{i}", "topic": i % 2, "x": "y"}) for i in range(n)]


def test_field_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.jsonl", [*_records(2), "", "  ", *_records(3)[2:]])
    examples = load_jsonl(path, "q", "a", meta_fields=("topic",))
    assert [(e.prompt, e.response, e.meta) for e in examples] == [
        ("q0", "a0", {"topic": 0}),
        ("q1", "a1", {"topic": 1}),
        ("q2", "a2", {"topic": 0}),
    ]
    assert len(load_jsonl(path, "q", "a", limit=2)) == 2


def test_load_examples_with_a_path_and_split_placeholder(tmp_path: Path) -> None:
    _write(tmp_path / "data_train.jsonl", _records(4))
    _write(tmp_path / "data_test.jsonl", _records(2))
    pattern = str(tmp_path / "data_{split}.jsonl")
    train = load_examples(pattern, "train", prompt_field="q", response_field="a")
    test = load_examples(pattern, "test", prompt_field="q", response_field="a", meta_fields=["x"])
    assert (len(train), len(test)) == (4, 2)
    assert test[0].meta == {"x": "y"}


@pytest.mark.parametrize(
    ("lines", "fields", "pattern"),
    [
        (
            [*_records(2), json.dumps({"q": "only a question"})],
            ("q", "a", ()),
            r"mine\.jsonl:3: missing field 'a' \(fields present: q\)$",
        ),
        (
            [*_records(1), json.dumps({"q": "x", "a": "y"})],
            ("q", "a", ("topic",)),
            r"mine\.jsonl:2: missing field 'topic'",
        ),
        ([*_records(1), "{not json"], ("q", "a", ()), r"mine\.jsonl:2: not valid JSON"),
        (["[1, 2]"], ("q", "a", ()), r"mine\.jsonl:1: expected a JSON object, got list"),
        (
            [json.dumps({"q": "x", "a": 3})],
            ("q", "a", ()),
            r"mine\.jsonl:1: field 'a' must be str, got int",
        ),
        ([""], ("q", "a", ()), r"mine\.jsonl: no examples"),
    ],
)
def test_errors_name_file_line_and_field(
    tmp_path: Path, lines: list[str], fields: tuple, pattern: str
) -> None:
    path = _write(tmp_path / "mine.jsonl", lines)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_jsonl(path, *fields[:2], meta_fields=fields[2])
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.jsonl: no such file"):
        load_examples(tmp_path / "absent.jsonl", "train")
    with pytest.raises(ConfigError, match="not a file"):
        load_jsonl(tmp_path, "q", "a")
