"""GSM-Hard (reasoning-machines/pal): GSM8K test questions with their numbers made larger.

Records of ``gsm_hard/gsmhardv2.jsonl`` are ``{"input", "code", "target"}``: the question, the
PAL program that solves it (a Python ``def solution():`` whose docstring holds the *original*
GSM8K question, with the larger numbers in its body) and the program's result as a ``float``.
There is a single split, ``test`` (1,319 records, one per GSM8K test question).

The prompt is ``input``; the response is ``code`` with its surrounding blank lines stripped (it is
a training-style target for PAL; evaluators usually prompt with
:data:`smartfed.data.sets.gsm8k_pal.PAL_INSTRUCTION` and run the generated program instead).

``meta``: ``answer`` (``target``, a ``float``), ``source`` (``"gsm_hard"``).

``gsm_hard_pal`` is the same file in ``math_code``'s training format (``gsm8k_pal``): the prompt is
the question followed by the PAL instruction, the response the reference program in a fenced
``python`` block. Its answer-token loss is a transfer test for a model trained on GSM8K's
programs: harder numbers, and programs written by another hand (named variables, not ``v1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import jsonl_records, register_dataset, require_field
from smartfed.data.sets.gsm8k_pal import fenced, pal_prompt
from smartfed.errors import ConfigError

# The hub repository holds the same file at its root (one split, "train" to `datasets`).
HUB_ID = "reasoning-machines/gsm-hard"
HUB_FILE = "gsmhardv2.jsonl"


def read_gsm_hard_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """Examples of GSM-Hard ``(location, record)`` pairs (file lines or hub rows)."""
    for where, record in records:
        question = require_field(record, "input", where, None, kind=str)
        code = require_field(record, "code", where, None, kind=str)
        target = require_field(record, "target", where, None, kind=(int, float))
        if isinstance(target, bool) or not math.isfinite(target):
            raise ConfigError(f"{where}: field 'target' must be a finite number")
        yield Example(
            prompt=question.strip(),
            response=code.strip("\n"),
            meta={"answer": float(target), "source": "gsm_hard"},
        )


@register_dataset(
    "gsm_hard",
    splits={"test": f"gsm_hard/{HUB_FILE}"},
    description="GSM-Hard: GSM8K test with larger numbers, PAL programs (reasoning-machines/pal)",
    hub=HubSource(HUB_ID, read=read_gsm_hard_records, files={"test": HUB_FILE}),
    meta_fields=("answer", "source"),
    split_sizes={"test": 1319},
)
def read_gsm_hard(path: Path, split: str) -> Iterator[Example]:
    return read_gsm_hard_records(jsonl_records(path), split)


def read_gsm_hard_pal_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """GSM-Hard as ``gsm8k_pal`` examples: PAL prompt, fenced reference program."""
    for example in read_gsm_hard_records(records, split):
        yield Example(
            prompt=pal_prompt(example.prompt),
            response=fenced(example.response),
            meta={**example.meta, "source": "gsm_hard_pal"},
        )


@register_dataset(
    "gsm_hard_pal",
    splits={"test": f"gsm_hard/{HUB_FILE}"},
    description="GSM-Hard in gsm8k_pal's format: PAL prompt, the reference program as response",
    hub=HubSource(HUB_ID, read=read_gsm_hard_pal_records, files={"test": HUB_FILE}),
    meta_fields=("answer", "source"),
    split_sizes={"test": 1319},
)
def read_gsm_hard_pal(path: Path, split: str) -> Iterator[Example]:
    return read_gsm_hard_pal_records(jsonl_records(path), split)
