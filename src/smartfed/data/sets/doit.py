"""DoIT (ChiyuSONG/dynamics-of-instruction-tuning): Chinese instructions in ten ability categories.

**Not included offline.** DoIT is only on the Hugging Face hub (the GitHub repository's ``data/``
is empty). ``load_examples("doit", ...)`` reads a local copy when one is given, else the hub copy
through ``datasets.load_dataset`` (the three files below, from the Hugging Face cache or
downloaded when online), else fails with a one-line error. A local copy is the dataset repository
cloned as ``doit/`` inside a data dir, with ``--data_dir`` (or ``$SMARTFED_DATA_DIR``) pointing at
that data dir::

    git clone https://huggingface.co/datasets/ChiyuSONG/dynamics-of-instruction-tuning DIR/doit

``doit`` is DoIT's **code-generation** ability (LeetCode problems with Chinese statements, 5,168
items in total), the part this project uses; the offline stand-in is ``zh_code``. Its splits are
the curated files of that ability:

* ``train``: ``doit/curated/full/code_full.json``;
* ``valid``: ``doit/curated/valid/code_valid.json``;
* ``test``: ``doit/curated/test/code_test.json``.

:func:`read_doit_file` reads any DoIT file, so other abilities can be registered the same way.

Where the format knowledge comes from (nothing of DoIT could be downloaded here, so this reader
has not been run on a real file):

* the dataset card (README.md of the hub repository, e.g. revision ``b046c39e``) lists the ten
  abilities and sources (code: LeetCode, 5,168) and its "Data Format" section shows records with
  ``"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]``,
  ``"idx"`` (an id, independent per ability) and ``"type"`` (the ability's name);
* the hub repository's tree: ``curated/{1000,full,valid,test}/`` and ``synthetic/``, with files
  named ``<ability>_<folder>.json`` (the commit history shows ``curated/full/code_full.json``,
  ``curated/valid/code_valid.json``, ``curated/test/code_test.json``,
  ``curated/1000/code_1000.json``);
* the GitHub repository ChiyuSONG/dynamics-of-instruction-tuning (commit ``57e2661e``):
  ``make_data.py`` and ``train_sft.py`` read every ``*.json`` file **line by line** with
  ``json.loads`` (the files are JSON Lines despite the ``.json`` name) and train on
  ``messages`` (loss on the assistant turns); ``evaluate/pred.py`` and ``evaluate/scorer.py`` show
  that valid/test records also carry ``"question_format"``: 0 for free generation, 1 for a
  multiple-choice item with ``"choices"`` (3 candidate answers, the first one correct: a model
  scores when the first choice has the lowest perplexity).

Assumed here: each record's last message is the assistant's reference answer; the prompt is the
last user message, with earlier turns (multi-turn role-play data) written before it as
``用户：...`` / ``助手：...`` lines. A file that is one JSON list instead of JSON Lines is read too.

``meta``: ``type`` (the ability, ``"code"`` here; from the record, else the file name),
``idx`` (the record's ``idx``, else its position), ``question_format`` (0 or 1; 0 when
absent), ``choices`` (list of ``str``; only for question_format 1), ``source`` (``"doit"``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import DATA_DIR_ENV, iter_jsonl, register_dataset, require_field
from smartfed.errors import ConfigError

HUB_ID = "ChiyuSONG/dynamics-of-instruction-tuning"
SPLITS = {
    "train": "doit/curated/full/code_full.json",
    "valid": "doit/curated/valid/code_valid.json",
    "test": "doit/curated/test/code_test.json",
}
MISSING_HINT = (
    f"DoIT is not included offline (it is only on the Hugging Face hub, {HUB_ID}); to use it, "
    "go online once (the hub copy is then cached), or for a local copy run "
    f"'git clone https://huggingface.co/datasets/{HUB_ID} DIR/doit' and pass "
    f"--data_dir DIR or set ${DATA_DIR_ENV}=DIR (DIR/doit/curated/{{full,valid,test}}/"
    "code_{full,valid,test}.json are read)"
)
ROLE_LABELS = {"user": "用户", "assistant": "助手"}


def _iter_doit_records(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(location, record)`` pairs of a DoIT file: JSON Lines, or one JSON list."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    if head.startswith(b"["):
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a valid UTF-8 JSON file ({exc})") from None
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise ConfigError(
                    f"{path}: record {index} must be a JSON object, got {type(record).__name__}"
                )
            yield f"{path}: record {index}", record
        return
    for line_no, record in iter_jsonl(path):
        yield f"{path}:{line_no}", record


def doit_example(record: Mapping[str, Any], where: str, *, default_type: str) -> Example:
    """The example of one DoIT record (see the module docstring); ConfigError names ``where``."""
    messages = require_field(record, "messages", where, None, kind=list)
    turns: list[tuple[str, str]] = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigError(f"{where}: messages[{number}] must be an object")
        role = require_field(message, "role", f"{where}: messages[{number}]", None, kind=str)
        content = require_field(message, "content", f"{where}: messages[{number}]", None, kind=str)
        if role not in ROLE_LABELS:
            raise ConfigError(f"{where}: messages[{number}] has unknown role {role!r}")
        turns.append((role, content.strip()))
    if len(turns) < 2 or turns[-1][0] != "assistant" or turns[-2][0] != "user":
        raise ConfigError(f"{where}: messages must end with a user turn and an assistant turn")
    history = "".join(f"{ROLE_LABELS[role]}：{content}\n" for role, content in turns[:-2])
    # A hub row has every column of its file, None where a record lacks it.
    question_format = record.get("question_format")
    question_format = 0 if question_format is None else question_format
    if question_format not in (0, 1):
        raise ConfigError(f"{where}: field 'question_format' must be 0 or 1")
    meta: dict[str, Any] = {
        "type": str(record.get("type") or default_type),
        "idx": record.get("idx"),
        "question_format": question_format,
        "source": "doit",
    }
    if question_format == 1:
        choices = require_field(record, "choices", where, None, kind=list)
        if not all(isinstance(choice, str) for choice in choices):
            raise ConfigError(f"{where}: field 'choices' must be a list of strings")
        meta["choices"] = list(choices)
    return Example(prompt=history + turns[-2][1], response=turns[-1][1], meta=meta)


def read_doit_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], default_type: str
) -> Iterator[Example]:
    """Examples of DoIT ``(location, record)`` pairs; ``idx`` defaults to the position."""
    for position, (where, record) in enumerate(records):
        example = doit_example(record, where, default_type=default_type)
        if example.meta["idx"] is None:
            example.meta["idx"] = position
        yield example


def read_doit_file(path: Path) -> Iterator[Example]:
    """Examples of one DoIT file (``<ability>_<folder>.json``)."""
    return read_doit_records(_iter_doit_records(path), path.stem.rsplit("_", 1)[0])


def read_doit_hub_rows(
    records: Iterable[tuple[str, Mapping[str, Any]]], split: str
) -> Iterator[Example]:
    return read_doit_records(records, "code")


@register_dataset(
    "doit",
    splits=SPLITS,
    description="DoIT code-generation ability (Chinese LeetCode); hub only, not shipped offline",
    # The same three files of the hub repository (each one JSON Lines file: one split).
    hub=HubSource(
        HUB_ID,
        read=read_doit_hub_rows,
        files={split: path.removeprefix("doit/") for split, path in SPLITS.items()},
    ),
    meta_fields=("type", "idx", "question_format", "choices", "source"),
    missing_hint=MISSING_HINT,
)
def read_doit(path: Path, split: str) -> Iterator[Example]:
    return read_doit_file(path)
