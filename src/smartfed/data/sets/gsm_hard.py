"""GSM-Hard (reasoning-machines/pal): GSM8K test questions with their numbers made larger.

Records of ``gsm_hard/gsmhardv2.jsonl`` are ``{"input", "code", "target"}``: the question, the
PAL program that solves it (a Python ``def solution():`` whose docstring holds the *original*
GSM8K question, with the larger numbers in its body) and the program's result as a ``float``.
There is a single split, ``test`` (1,319 records, one per GSM8K test question).

The prompt is ``input``; the response is ``code`` with its surrounding blank lines stripped (it is
a training-style target for PAL; evaluators usually prompt with
:data:`smartfed.data.sets.gsm8k_pal.PAL_INSTRUCTION` and run the generated program instead).

``meta``: ``answer`` (``target``, a ``float``), ``source`` (``"gsm_hard"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from smartfed.data.examples import Example
from smartfed.data.registry import iter_jsonl, register_dataset, require_field
from smartfed.errors import ConfigError


@register_dataset(
    "gsm_hard",
    splits={"test": "gsm_hard/gsmhardv2.jsonl"},
    description="GSM-Hard: GSM8K test with larger numbers, PAL programs (reasoning-machines/pal)",
    hub_id="reasoning-machines/gsm-hard",
    meta_fields=("answer", "source"),
)
def read_gsm_hard(path: Path, split: str) -> Iterator[Example]:
    for line_no, record in iter_jsonl(path):
        question = require_field(record, "input", path, line_no, kind=str)
        code = require_field(record, "code", path, line_no, kind=str)
        target = require_field(record, "target", path, line_no, kind=(int, float))
        if isinstance(target, bool) or not math.isfinite(target):
            raise ConfigError(f"{path}:{line_no}: field 'target' must be a finite number")
        yield Example(
            prompt=question.strip(),
            response=code.strip("\n"),
            meta={"answer": float(target), "source": "gsm_hard"},
        )
