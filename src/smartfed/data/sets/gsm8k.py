"""GSM8K (openai/grade-school-math): grade-school maths word problems with worked solutions.

Records are ``{"question": ..., "answer": ...}``; the answer is a chain of thought whose
arithmetic carries calculator notes (``48/2 = <<48/2=24>>24``) and whose last line is
``#### N``. The training target is that chain of thought with the notes removed and the last line
rewritten as ``The answer is N.``, with thousands separators dropped from N (``#### 1,080`` becomes
``The answer is 1080.``), so the final line is easy to parse back.

``meta``:

* ``answer``: N as an ``int`` (every GSM8K answer is an integer; a non-integer N is kept as a
  ``float``);
* ``answer_bucket``: the number of digits of ``|N|``'s integer part, capped at 4 (so 4 means "4 or
  more"): a small discrete label for Dirichlet partitioning, since GSM8K has no class field. On
  the train split the buckets hold 1362 / 3605 / 1709 / 797 examples;
* ``source``: ``"gsm8k"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import jsonl_records, register_dataset, require_field
from smartfed.errors import ConfigError

CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
FINAL_LINE = re.compile(r"(?:^|\n)####[ \t]*(?P<answer>[^\n]*?)\s*$")
ANSWER_BUCKET_CAP = 4


def strip_calculator_notes(text: str) -> str:
    """Remove GSM8K's ``<<expression=result>>`` calculator annotations."""
    return CALCULATOR_NOTE.sub("", text)


def parse_number(text: str) -> int | float:
    """``"1,080"`` -> 1080, ``"-7"`` -> -7, ``"2.5"`` -> 2.5; ValueError if not a number."""
    cleaned = text.replace(",", "").strip()
    if re.fullmatch(r"[-+]?\d+", cleaned):
        return int(cleaned)
    return float(cleaned)


def answer_bucket(answer: int | float) -> int:
    return min(len(str(abs(int(answer)))), ANSWER_BUCKET_CAP)


def gsm8k_example(question: str, answer: str, *, source: str = "gsm8k") -> Example:
    """Build the training example of one GSM8K record; ValueError if it has no ``#### N`` line."""
    match = FINAL_LINE.search(answer)
    if match is None:
        raise ValueError("the answer has no final '#### N' line")
    try:
        number = parse_number(match.group("answer"))
    except ValueError:
        raise ValueError(
            f"the final line's answer {match.group('answer')!r} is not a number"
        ) from None
    reasoning = strip_calculator_notes(answer[: match.start()]).rstrip()
    final = f"The answer is {number}."
    response = f"{reasoning}\n{final}" if reasoning else final
    meta = {"answer": number, "answer_bucket": answer_bucket(number), "source": source}
    return Example(prompt=question, response=response, meta=meta)


SPLIT_FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
SPLIT_SIZES = {"train": 7473, "test": 1319}
HUB_ID = "openai/gsm8k"  # config "main": main/{train,test}-*.parquet, columns question, answer


def read_gsm8k_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """Examples of GSM8K ``(location, record)`` pairs (file lines or hub rows)."""
    for where, record in records:
        question = require_field(record, "question", where, None, kind=str)
        answer = require_field(record, "answer", where, None, kind=str)
        try:
            yield gsm8k_example(question, answer)
        except ValueError as exc:
            raise ConfigError(f"{where}: field 'answer': {exc}") from None


@register_dataset(
    "gsm8k",
    splits=SPLIT_FILES,
    description="GSM8K grade-school maths, chain-of-thought answers (openai/grade-school-math)",
    label_field="answer_bucket",
    hub=HubSource(
        HUB_ID, read=read_gsm8k_records, config="main", splits={"train": "train", "test": "test"}
    ),
    meta_fields=("answer", "answer_bucket", "source"),
    split_sizes=SPLIT_SIZES,
)
def read_gsm8k(path: Path, split: str) -> Iterator[Example]:
    return read_gsm8k_records(jsonl_records(path), split)
