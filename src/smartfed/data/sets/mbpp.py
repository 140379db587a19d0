"""MBPP (google-research/google-research ``mbpp/``): 974 crowd-sourced Python problems.

Records of ``mbpp/mbpp.jsonl`` are ``{"text", "code", "task_id", "test_setup_code",
"test_list", "challenge_test_list"}``. The splits follow google-research's README and are taken
from the one file by ``task_id``: ``prompt`` = 1-10 (the few-shot examples), ``test`` = 11-510
(500 problems), ``train`` = 511-974 (the README's train and validation ids, 464 problems).

The prompt is ``text`` followed by ``"\\nYour code should pass this test:\\n"`` and the first
assert of ``test_list``, so the model sees the expected function name and signature; the
response is ``code`` with Windows line ends (``\\r\\n``, in 972 of the 974 records; 4 also end with
a lone ``\\r``) turned into ``\\n`` and surrounding blank lines stripped.

``meta``: ``task_id`` (``int``), ``test_list`` (the 3 asserts, a list of ``str``),
``test_setup_code`` (``str``, empty for all but 2 problems), ``source`` (``"mbpp"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import jsonl_records, register_dataset, require_field
from smartfed.errors import ConfigError

SPLIT_TASK_IDS = {"prompt": range(1, 11), "test": range(11, 511), "train": range(511, 975)}
TEST_HEADER = "\nYour code should pass this test:\n"
# Config "full" of the hub copy splits the same ids: prompt 1-10, test 11-510, validation
# 511-600, train 601-974 (full/<split>-*.parquet, the file's columns).
HUB_ID = "google-research-datasets/mbpp"
HUB_SPLITS = {"prompt": "prompt", "test": "test", "train": "validation+train"}


def read_mbpp_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    """Examples of MBPP ``(location, record)`` pairs whose task id is in ``split``."""
    task_ids = SPLIT_TASK_IDS[split]
    for where, record in records:
        task_id = require_field(record, "task_id", where, None, kind=int)
        if task_id not in task_ids:
            continue
        text = require_field(record, "text", where, None, kind=str)
        code = require_field(record, "code", where, None, kind=str)
        setup = require_field(record, "test_setup_code", where, None, kind=str)
        tests = require_field(record, "test_list", where, None, kind=list)
        if not tests or not all(isinstance(test, str) for test in tests):
            raise ConfigError(f"{where}: field 'test_list' must be a non-empty list of strings")
        yield Example(
            prompt=f"{text.strip()}{TEST_HEADER}{tests[0]}",
            response=code.replace("\r\n", "\n").replace("\r", "\n").strip("\n"),
            meta={
                "task_id": task_id,
                "test_list": list(tests),
                "test_setup_code": setup,
                "source": "mbpp",
            },
        )


@register_dataset(
    "mbpp",
    splits={split: "mbpp/mbpp.jsonl" for split in ("train", "test", "prompt")},
    description="MBPP Python programming problems with assert tests (google-research)",
    hub=HubSource(HUB_ID, read=read_mbpp_records, config="full", splits=HUB_SPLITS),
    meta_fields=("task_id", "test_list", "test_setup_code", "source"),
    split_sizes={split: len(ids) for split, ids in SPLIT_TASK_IDS.items()},
)
def read_mbpp(path: Path, split: str) -> Iterator[Example]:
    return read_mbpp_records(jsonl_records(path), split)
