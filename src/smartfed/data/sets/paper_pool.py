"""The paper's pool-module training data: MetaMathQA, Magicoder OSS-Instruct and Okapi-zh.

The paper trains its three pool LoRAs on English maths (MetaMathQA, 395K), English code
(Magicoder OSS-Instruct, 75K) and Chinese chat (Okapi's 52K ChatGPT-translated Alpaca in
Chinese). None of them is shipped here (the committed pool modules use the offline stand-ins
``gsm8k``, ``code_instruct`` and ``zh_instruct``); registering them lets ``smartfed pool build
NAME --data metamathqa`` (...) use the real data wherever it is. Like every registered dataset,
each is read from ``--data_dir`` / ``$SMARTFED_DATA_DIR`` when the file is there, else from its
hub copy through ``datasets.load_dataset`` (Hugging Face cache, or downloaded when online):

* ``metamathqa``: hub ``meta-math/MetaMathQA`` (MIT), file ``MetaMathQA-395K.json`` (a JSON list
  of ``{"type", "query", "original_question", "response"}``); local layout
  ``metamathqa/MetaMathQA-395K.json`` (the hub repository cloned as ``metamathqa/``). Prompt
  ``query``, response ``response`` (ends with ``The answer is: N``). ``meta``: ``type`` (e.g.
  ``GSM_Rephrased``), ``source``, ``index``.
* ``magicoder_oss_instruct``: hub ``ise-uiuc/Magicoder-OSS-Instruct-75K`` (MIT), file
  ``data-oss_instruct-decontaminated.jsonl`` (JSON Lines of ``{"lang", "raw_index", "index",
  "seed", "openai_fingerprint", "problem", "solution"}``); local layout
  ``magicoder_oss_instruct/data-oss_instruct-decontaminated.jsonl``. Prompt ``problem``,
  response ``solution``. ``meta``: ``lang`` (the seed snippet's language), ``source``, ``index``.
* ``okapi_zh``: **no hub copy**: Okapi (nlp-uoregon/Okapi, data CC BY-NC 4.0) publishes its data
  on GitHub as Git LFS files and on its own web server, not as a Hugging Face dataset (none was
  found under the authors' names). Local layout: the GitHub repository cloned as ``okapi/``
  with its LFS file fetched, ``okapi/datasets/multilingual-alpaca-52k/zh.json`` (Alpaca records
  ``{"instruction", "input", "output"}``, read as a JSON list or JSON Lines). Prompt and
  response as for ``zh_instruct``. ``meta``: ``source``, ``index``.

Each has a ``train`` and a ``test`` split held out as in ``zh_instruct``: record ``i`` (in file
order) is in ``test`` when ``i % 20 == 0``. Records with an empty response are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.data.hub import HubSource
from smartfed.data.registry import DATA_DIR_ENV, register_dataset, require_field
from smartfed.data.sets.instruct import alpaca_record_examples, in_split, read_json_records

Records = Iterable[tuple[str, Mapping[str, Any]]]
SPLITS = ("train", "test")

METAMATHQA_HUB_ID = "meta-math/MetaMathQA"
METAMATHQA_FILE = "MetaMathQA-395K.json"
MAGICODER_HUB_ID = "ise-uiuc/Magicoder-OSS-Instruct-75K"
MAGICODER_FILE = "data-oss_instruct-decontaminated.jsonl"
OKAPI_ZH_FILE = "okapi/datasets/multilingual-alpaca-52k/zh.json"
OKAPI_HINT = (
    "Okapi-zh is not on the Hugging Face hub; run 'git clone https://github.com/nlp-uoregon/Okapi "
    "DIR/okapi' and 'git lfs pull --include datasets/multilingual-alpaca-52k/zh.json' inside it, "
    f"then pass --data_dir DIR or set ${DATA_DIR_ENV}=DIR"
)


def _prompt_response_examples(
    records: Records,
    split: str,
    *,
    prompt: str,
    response: str,
    source: str,
    meta: Mapping[str, str],
) -> Iterator[Example]:
    """Examples of the records of ``split`` (every 20th held out as ``test``): ``prompt`` and
    ``response`` name the record's fields, ``meta`` maps meta keys to record fields."""
    for index, (where, record) in enumerate(records):
        if not in_split(index, split):
            continue
        text = require_field(record, prompt, where, None, kind=str)
        answer = require_field(record, response, where, None, kind=str)
        if not answer.strip():
            continue
        extra = {key: require_field(record, name, where, None) for key, name in meta.items()}
        yield Example(
            prompt=text.strip(),
            response=answer.strip(),
            meta={**extra, "source": source, "index": index},
        )


def read_metamathqa_records(records: Records, split: str) -> Iterator[Example]:
    return _prompt_response_examples(
        records,
        split,
        prompt="query",
        response="response",
        source="metamathqa",
        meta={"type": "type"},
    )


def read_magicoder_records(records: Records, split: str) -> Iterator[Example]:
    source = "magicoder_oss_instruct"
    return _prompt_response_examples(
        records, split, prompt="problem", response="solution", source=source, meta={"lang": "lang"}
    )


@register_dataset(
    "metamathqa",
    splits={split: f"metamathqa/{METAMATHQA_FILE}" for split in SPLITS},
    description="MetaMathQA 395K English maths CoT (the paper's en_math pool data); hub only",
    hub=HubSource(
        METAMATHQA_HUB_ID,
        read=read_metamathqa_records,
        files={split: METAMATHQA_FILE for split in SPLITS},
    ),
    meta_fields=("type", "source", "index"),
)
def read_metamathqa(path: Path, split: str) -> Iterator[Example]:
    return read_metamathqa_records(read_json_records(path), split)


@register_dataset(
    "magicoder_oss_instruct",
    splits={split: f"magicoder_oss_instruct/{MAGICODER_FILE}" for split in SPLITS},
    description="Magicoder OSS-Instruct 75K code instructions (the paper's en_code pool data)",
    hub=HubSource(
        MAGICODER_HUB_ID,
        read=read_magicoder_records,
        files={split: MAGICODER_FILE for split in SPLITS},
    ),
    meta_fields=("lang", "source", "index"),
)
def read_magicoder(path: Path, split: str) -> Iterator[Example]:
    return read_magicoder_records(read_json_records(path), split)


@register_dataset(
    "okapi_zh",
    splits={split: OKAPI_ZH_FILE for split in SPLITS},
    description="Okapi Chinese Alpaca 52K (the paper's cn_chat pool data); local copy only",
    meta_fields=("source", "index"),
    missing_hint=OKAPI_HINT,
)
def read_okapi_zh(path: Path, split: str) -> Iterator[Example]:
    return alpaca_record_examples(read_json_records(path), split, source="okapi_zh")
