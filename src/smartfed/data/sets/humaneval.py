"""HumanEval (openai/human-eval): 164 hand-written Python programming problems.

``humaneval/HumanEval.jsonl.gz`` is gzip-compressed JSONL; records are ``{"task_id", "prompt",
"entry_point", "canonical_solution", "test"}``. There is a single split, ``test``.

The prompt is the HumanEval ``prompt`` (imports, the function signature and its docstring) and the
response is ``canonical_solution`` (the function body that completes it), both unchanged, so
``prompt + response`` is the reference program.

``meta``: ``task_id`` (``"HumanEval/0"``, ...), ``entry_point`` (the function to test), ``test``
(code defining ``check(candidate)``), ``code_prompt`` (the prompt again, for evaluators that
format the chat prompt differently but must complete this code), ``source`` (``"humaneval"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import jsonl_records, register_dataset, require_field

# Config "openai_humaneval": openai_humaneval/test-*.parquet, the same five string columns.
HUB_ID = "openai/openai_humaneval"


def read_humaneval_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """Examples of HumanEval ``(location, record)`` pairs (file lines or hub rows)."""
    for where, record in records:
        fields = {
            name: require_field(record, name, where, None, kind=str)
            for name in ("task_id", "prompt", "entry_point", "canonical_solution", "test")
        }
        yield Example(
            prompt=fields["prompt"],
            response=fields["canonical_solution"],
            meta={
                "task_id": fields["task_id"],
                "entry_point": fields["entry_point"],
                "test": fields["test"],
                "code_prompt": fields["prompt"],
                "source": "humaneval",
            },
        )


@register_dataset(
    "humaneval",
    splits={"test": "humaneval/HumanEval.jsonl.gz"},
    description="HumanEval Python function completion (openai/human-eval)",
    hub=HubSource(
        HUB_ID, read=read_humaneval_records, config="openai_humaneval", splits={"test": "test"}
    ),
    meta_fields=("task_id", "entry_point", "test", "code_prompt", "source"),
    split_sizes={"test": 164},
)
def read_humaneval(path: Path, split: str) -> Iterator[Example]:
    return read_humaneval_records(jsonl_records(path), split)
