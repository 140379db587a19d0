"""Alpaca-format instruction data: ``zh_instruct`` (Chinese chat) and ``code_instruct`` (code).

Both are stand-ins for the paper's pool data that cannot be fetched offline (see the data
folder's ``README.md``): ``zh_instruct`` is Alpaca machine-translated into Chinese (the same
kind of data as Okapi-zh), ``code_instruct`` is Code Alpaca's ``new_codealpaca.json`` (instead of
Magicoder OSS-Instruct).

Records are ``{"instruction", "input", "output"}``. The prompt is the instruction, followed by the
input after a blank line when there is one; the response is the output. Records with an empty
output (2 in ``zh_instruct``) are skipped, since there is nothing to learn from them.

Neither source has a test split, so one is held out deterministically: record ``i`` (0-based, in
file order, counting skipped records too) is in ``test`` when ``i % HOLDOUT_EVERY == 0`` and in
``train`` otherwise. ``meta`` holds ``source`` and ``index`` (that record number).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.registry import iter_jsonl, register_dataset, require_field
from smartfed.errors import ConfigError

HOLDOUT_EVERY = 20


def in_split(index: int, split: str) -> bool:
    """Whether record ``index`` belongs to ``split`` under the every-20th hold-out rule."""
    held_out = index % HOLDOUT_EVERY == 0
    return held_out if split == "test" else not held_out


def read_json_records(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(location, record)`` pairs of a JSON list file or a JSONL file; errors name the file.

    A ``.json`` file whose first non-blank character is ``{`` is read as JSON Lines: some
    published ``.json`` files are (the ``datasets`` JSON builder reads both).
    """
    if path.suffix == ".jsonl" or _starts_with_object(path):
        for line_no, record in iter_jsonl(path):
            yield f"{path}:{line_no}", record
        return
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid UTF-8 JSON file ({exc})") from None
    if not isinstance(records, list):
        raise ConfigError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ConfigError(
                f"{path}: record {index} must be a JSON object, got {type(record).__name__}"
            )
        yield f"{path}: record {index}", record


def _starts_with_object(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(256).lstrip().startswith(b"{")


def alpaca_example(
    record: Mapping[str, Any], where: str, *, source: str, index: int
) -> Example | None:
    """The example of one Alpaca record, or None when its output is empty; errors name ``where``."""
    instruction = require_field(record, "instruction", where, None, kind=str)
    extra = require_field(record, "input", where, None, kind=str) if "input" in record else ""
    output = require_field(record, "output", where, None, kind=str)
    if not output.strip():
        return None
    prompt = f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction
    return Example(
        prompt=prompt.strip(), response=output.strip(), meta={"source": source, "index": index}
    )


def alpaca_examples(path: Path, split: str, *, source: str) -> Iterator[Example]:
    """Examples of one Alpaca-format file, restricted to ``split`` (see the module docstring)."""
    return alpaca_record_examples(read_json_records(path), split, source=source)


def alpaca_record_examples(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str, *, source: str
) -> Iterator[Example]:
    """Examples of Alpaca-format ``(location, record)`` pairs, restricted to ``split``."""
    for index, (where, record) in enumerate(records):
        if not in_split(index, split):
            continue
        example = alpaca_example(record, where, source=source, index=index)
        if example is not None:
            yield example


@register_dataset(
    "zh_instruct",
    splits={
        "train": "zh_instruct/alpaca_zh_translated_5k.jsonl",
        "test": "zh_instruct/alpaca_zh_translated_5k.jsonl",
    },
    description="Chinese instructions: Alpaca translated to Chinese, 5K sample (Okapi-zh stand-in)",
    meta_fields=("source", "index"),
)
def read_zh_instruct(path: Path, split: str) -> Iterator[Example]:
    return alpaca_examples(path, split, source="zh_instruct")


@register_dataset(
    "code_instruct",
    splits={
        "train": "code_instruct/new_codealpaca.json",
        "test": "code_instruct/new_codealpaca.json",
    },
    description="Code instructions: Code Alpaca new_codealpaca.json (OSS-Instruct stand-in)",
    meta_fields=("source", "index"),
)
def read_code_instruct(path: Path, split: str) -> Iterator[Example]:
    return alpaca_examples(path, split, source="code_instruct")
