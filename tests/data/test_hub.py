"""Hub copies of registered datasets, read offline by ``datasets.load_dataset`` from local folders
laid out like each hub repository (``$SMARTFED_HUB_MIRROR/<owner>/<name>``) with its real file
names and column names; and when the bundled subset is used instead of the hub.

``HF_DATASETS_OFFLINE=1`` and an empty ``HF_DATASETS_CACHE`` come from tests/conftest.py, so
nothing here can reach the network or a developer's cache.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smartfed.data import DATA_DIR_ENV, HUB_MIRROR_ENV, Example, load_examples, registry
from smartfed.data import hub as hub_module
from smartfed.data.hub import HubSource, HubUnavailable
from smartfed.errors import ConfigError


@pytest.fixture(autouse=True)
def _mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv(HUB_MIRROR_ENV, str(mirror))
    return mirror


# --------------------------------------------------------------------------------------------
# Repository layouts (file names, configs and columns as published on the hub)


def _card(path: Path, configs: dict[str, dict[str, str]] | None = None) -> None:
    """README.md with the YAML header the hub uses to declare configs and their data files."""
    lines = ["---", "license: mit"]
    if configs:
        lines.append("configs:")
        for name, splits in configs.items():
            lines += [f"- config_name: {name}", "  data_files:"]
            lines += [f"  - split: {split}\n    path: {glob}" for split, glob in splits.items()]
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text("\n".join([*lines, "---", "", "# test copy", ""]))


def _parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl(path: Path, rows: list[dict[str, Any]], *, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path.write_text(text, encoding="utf-8")


def _parquet_splits(repo: Path, config: str, splits: dict[str, list[dict[str, Any]]]) -> None:
    for split, rows in splits.items():
        _parquet(repo / config / f"{split}-00000-of-00001.parquet", rows)


GSM8K = [
    {"question": f"Tom has {i} apples and buys 3. How many?", "answer": f"{i}+3=<<{i}+3={i + 3}>>"
     f"{i + 3}\n#### {i + 3}"}
    for i in range(4)
]  # fmt: skip
GSM_HARD = [
    {
        "input": f"Q{i} with 1234567 sheep?",
        "code": f"def solution():\n    return {i}\n",
        "target": i,
    }
    for i in range(3)
]
HUMANEVAL = [
    {
        "task_id": f"HumanEval/{i}",
        "prompt": f"def f{i}(x):\n    '''Return x + {i}.'''\n",
        "canonical_solution": f"    return x + {i}\n",
        "test": f"def check(candidate):\n    assert candidate(1) == {i + 1}\n",
        "entry_point": f"f{i}",
    }
    for i in range(3)
]


def _mbpp(task_id: int) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "text": f"Write a function t{task_id} returning {task_id}.",
        "code": f"def t{task_id}():\r\n    return {task_id}",
        "test_list": [f"assert t{task_id}() == {task_id}"] * 3,
        "test_setup_code": "",
        "challenge_test_list": [],
    }


MBPP_IDS = {"prompt": [1, 2], "test": [11, 12], "validation": [511], "train": [601, 602]}
MGSM_DE = [
    {"question": "Wie viele?", "answer": None, "answer_number": 18, "equation_solution": None},
    {"question": "Und jetzt?", "answer": None, "answer_number": 2125, "equation_solution": None},
]
DOIT = [
    {
        "messages": [
            {"role": "user", "content": "写一个函数"},
            {"role": "assistant", "content": "def f(): pass"},
        ],
        "idx": 7,
        "type": "code",
    },
    {
        "messages": [
            {"role": "user", "content": "反转链表"},
            {"role": "assistant", "content": "def r(h): ..."},
        ],
        "idx": 8,
        "type": "code",
    },
]
METAMATH = [
    {
        "type": "GSM_Rephrased" if i % 2 else "MATH_AnsAug",
        "query": f"What is {i} + {i}?",
        "original_question": f"{i}+{i}?",
        "response": f"{i} + {i} = {2 * i}.\nThe answer is: {2 * i}",
    }
    for i in range(22)
]
MAGICODER = [
    {
        "lang": "python",
        "raw_index": 100 + i,
        "index": i,
        "seed": "def seed(): ...",
        "openai_fingerprint": "fp_0",
        "problem": f"Implement add{i}.",
        "solution": f"```python\ndef add{i}(a):\n    return a + {i}\n```",
    }
    for i in range(21)
]


def _gsm8k_repo(mirror: Path) -> None:
    repo = mirror / "openai" / "gsm8k"
    configs = {"main": {"train": "main/train-*", "test": "main/test-*"}}
    configs["socratic"] = {"train": "socratic/train-*", "test": "socratic/test-*"}
    _card(repo, configs)
    _parquet_splits(repo, "main", {"train": GSM8K, "test": GSM8K[:2]})
    socratic = [{**row, "answer": "How? ** no final line"} for row in GSM8K]
    _parquet_splits(repo, "socratic", {"train": socratic, "test": socratic})


def _gsm8k_files(root: Path) -> None:
    _jsonl(root / "gsm8k" / "train.jsonl", GSM8K)
    _jsonl(root / "gsm8k" / "test.jsonl", GSM8K[:2])


def _gsm_hard_repo(mirror: Path, rows: list[dict[str, Any]] = GSM_HARD) -> None:
    repo = mirror / "reasoning-machines" / "gsm-hard"
    _card(repo)
    _jsonl(repo / "gsmhardv2.jsonl", rows)


def _humaneval_repo(mirror: Path) -> None:
    repo = mirror / "openai" / "openai_humaneval"
    _card(repo, {"openai_humaneval": {"test": "openai_humaneval/test-*"}})
    _parquet_splits(repo, "openai_humaneval", {"test": HUMANEVAL})


def _mbpp_repo(mirror: Path) -> None:
    repo = mirror / "google-research-datasets" / "mbpp"
    splits = ("train", "test", "validation", "prompt")
    _card(repo, {c: {s: f"{c}/{s}-*" for s in splits} for c in ("full", "sanitized")})
    _parquet_splits(repo, "full", {s: [_mbpp(i) for i in ids] for s, ids in MBPP_IDS.items()})
    sanitized = {"source_file": "x", "task_id": 11, "prompt": "p", "code": "c",
                 "test_imports": [], "test_list": ["assert True"]}  # fmt: skip
    _parquet_splits(repo, "sanitized", {s: [sanitized] for s in splits})


def _mgsm_repo(mirror: Path) -> None:
    repo = mirror / "juletxara" / "mgsm"
    _card(repo, {lang: {s: f"{lang}/{s}-*" for s in ("train", "test")} for lang in ("de", "en")})
    exemplar = {"question": "Frage", "answer": "Schritt für Schritt", "answer_number": 1,
                "equation_solution": "1"}  # fmt: skip
    _parquet_splits(repo, "de", {"train": [exemplar], "test": MGSM_DE})
    _parquet_splits(repo, "en", {"train": [exemplar], "test": MGSM_DE[:1]})


def _doit_repo(mirror: Path) -> None:
    repo = mirror / "ChiyuSONG" / "dynamics-of-instruction-tuning"
    _card(repo)
    _jsonl(repo / "curated" / "full" / "code_full.json", DOIT)
    _jsonl(repo / "curated" / "full" / "roleplay_full.json", DOIT[:1])


def _metamath_repo(mirror: Path) -> None:
    repo = mirror / "meta-math" / "MetaMathQA"
    _card(repo)
    (repo / "MetaMathQA-395K.json").write_text(json.dumps(METAMATH, indent=2), encoding="utf-8")


def _magicoder_repo(mirror: Path) -> None:
    repo = mirror / "ise-uiuc" / "Magicoder-OSS-Instruct-75K"
    _card(repo)
    _jsonl(repo / "data-oss_instruct-decontaminated.jsonl", MAGICODER)


def _mgsm_file(root: Path) -> None:
    rows = "".join(f"{r['question']}\t{r['answer_number']:,}\n" for r in MGSM_DE)
    (root / "mgsm").mkdir(parents=True)
    (root / "mgsm" / "mgsm_de.tsv").write_text(rows, encoding="utf-8")


# (dataset, split, repository builder, builder of the same data in the data-dir layout)
Builder = Callable[[Path], None]
CASES: list[tuple[str, str, Builder, Builder]] = [
    ("gsm8k", "train", _gsm8k_repo, _gsm8k_files),
    ("gsm8k_pal", "train", _gsm8k_repo, _gsm8k_files),
    ("gsm_hard", "test", _gsm_hard_repo, lambda root: _jsonl(root / "gsm_hard/gsmhardv2.jsonl",
                                                              GSM_HARD)),
    ("humaneval", "test", _humaneval_repo,
     lambda root: _jsonl(root / "humaneval/HumanEval.jsonl.gz", HUMANEVAL, gz=True)),
    ("mbpp", "train", _mbpp_repo, lambda root: _jsonl(
        root / "mbpp/mbpp.jsonl", [_mbpp(i) for ids in MBPP_IDS.values() for i in sorted(ids)])),
    ("mgsm_de", "test", _mgsm_repo, _mgsm_file),
    ("doit", "train", _doit_repo,
     lambda root: _jsonl(root / "doit/curated/full/code_full.json", DOIT)),
    ("metamathqa", "test", _metamath_repo, lambda root: _metamath_repo(root / "x") or
     (root / "x/meta-math/MetaMathQA").rename(root / "metamathqa")),
    ("magicoder_oss_instruct", "train", _magicoder_repo, lambda root: _jsonl(
        root / "magicoder_oss_instruct/data-oss_instruct-decontaminated.jsonl", MAGICODER)),
]  # fmt: skip


def _as_tuples(examples: list[Example]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.prompt, e.response, e.meta) for e in examples]


@pytest.mark.parametrize(("name", "split", "repo", "files"), CASES, ids=[c[0] for c in CASES])
def test_hub_layout_gives_the_same_examples_as_the_local_file(
    name: str,
    split: str,
    repo: Builder,
    files: Builder,
    _mirror: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo(_mirror)
    files(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="smartfed.data.registry"):
        from_hub = load_examples(name, split)
    assert "from the hub copy" in caplog.text
    from_file = load_examples(name, split, data_dir=tmp_path / "data")
    assert from_hub and _as_tuples(from_hub) == _as_tuples(from_file)


def test_concrete_hub_rows(_mirror: Path) -> None:
    _mbpp_repo(_mirror)
    # "validation+train" of config "full": the file's train ids 511-974; CRLF normalised.
    train = load_examples("mbpp", "train")
    assert [e.meta["task_id"] for e in train] == [511, 601, 602]
    assert train[0].response == "def t511():\n    return 511"
    assert load_examples("mbpp", "test", limit=5)[0].meta["task_id"] == 11  # bundled subset

    _mgsm_repo(_mirror)
    german = load_examples("mgsm_de", "test")
    assert [(e.response, e.meta["answer"]) for e in german] == [
        ("The answer is 18.", 18),
        ("The answer is 2125.", 2125),
    ]

    _metamath_repo(_mirror)
    test = load_examples("metamathqa", "test")
    assert [e.meta["index"] for e in test] == [0, 20]
    assert test[1].prompt == "What is 20 + 20?"
    assert test[1].response.endswith("The answer is: 40")
    assert test[1].meta == {"type": "MATH_AnsAug", "source": "metamathqa", "index": 20}
    assert len(load_examples("metamathqa", "train")) == 20


def test_wrong_columns_name_the_hub_row(_mirror: Path) -> None:
    _gsm_hard_repo(_mirror, [{"question": "Q?", "code": "x", "target": 1.0}])
    with pytest.raises(ConfigError) as info:
        load_examples("gsm_hard", "test", limit=60)
    message = str(info.value)
    assert "\n" not in message
    assert "reasoning-machines/gsm-hard (file gsmhardv2.jsonl) row 0: missing field 'input'" in (
        message
    )


# --------------------------------------------------------------------------------------------
# Bundled subset or hub


def test_a_request_the_bundled_subset_holds_never_consults_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_hub(*args: object) -> None:
        raise AssertionError("the hub must not be consulted")

    monkeypatch.setattr(registry, "hub_records", no_hub)
    assert len(load_examples("gsm_hard", "test", limit=2)) == 2
    assert len(load_examples("humaneval", "test", limit=40)) == 40
    assert len(load_examples("mbpp", "test", limit=50)) == 50
    assert len(load_examples("mbpp", "prompt")) == 10  # the whole split is bundled
    assert len(load_examples("mgsm_zh", "test")) == 250


def test_more_than_bundled_comes_from_the_hub(_mirror: Path) -> None:
    rows = [{**GSM_HARD[0], "input": f"Q{i}?", "target": i} for i in range(60)]
    _gsm_hard_repo(_mirror, rows)
    examples = load_examples("gsm_hard", "test", limit=55)
    assert [e.prompt for e in examples] == [f"Q{i}?" for i in range(55)]
    assert len(load_examples("gsm_hard", "test")) == 60


def test_more_than_bundled_without_the_hub_warns_and_says_how_much(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="smartfed.data.registry"):
        examples = load_examples("gsm_hard", "test", limit=60)
    assert len(examples) == 50
    assert "using the bundled subset, 50 of the 1319 examples (60 were asked for)" in caplog.text
    assert "reasoning-machines/gsm-hard" in caplog.text and "--data_dir" in caplog.text


def test_absent_everywhere_is_one_line_naming_the_hub_failure() -> None:
    with pytest.raises(ConfigError) as info:
        load_examples("magicoder_oss_instruct", "train")
    message = str(info.value)
    assert "\n" not in message
    assert "magicoder_oss_instruct/data-oss_instruct-decontaminated.jsonl not found" in message
    assert "the hub copy ise-uiuc/Magicoder-OSS-Instruct-75K" in message
    assert "--data_dir" in message


def test_okapi_zh_is_local_only_and_says_how_to_get_it(tmp_path: Path) -> None:
    assert registry.DATASETS["okapi_zh"].hub is None
    with pytest.raises(ConfigError, match="git lfs pull --include datasets/multilingual-alpaca"):
        load_examples("okapi_zh", "train")
    path = tmp_path / "okapi/datasets/multilingual-alpaca-52k/zh.json"
    rows = [{"instruction": f"说{i}", "input": "", "output": f"好{i}"} for i in range(21)]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert [e.prompt for e in load_examples("okapi_zh", "test", data_dir=tmp_path)] == [
        "说0",
        "说20",
    ]
    _jsonl(path, rows)  # the same records as JSON Lines under the .json name
    assert len(load_examples("okapi_zh", "train", data_dir=tmp_path)) == 19


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.delenv(HUB_MIRROR_ENV)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)

    def refuse(address: tuple[str, int], timeout: float) -> None:
        assert address == ("huggingface.co", 443)
        raise ConnectionRefusedError("no network")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_dataset must not be called")

    monkeypatch.setattr(hub_module.socket, "create_connection", refuse)
    monkeypatch.setattr(datasets, "load_dataset", never)
    hub_module.hub_unreachable.cache_clear()
    try:
        with pytest.raises(HubUnavailable, match=r"huggingface\.co\) is not reachable"):
            hub_module.hub_records(registry.DATASETS["doit"].hub, "train")
    finally:
        hub_module.hub_unreachable.cache_clear()


def test_hub_source_must_cover_every_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))
    source = HubSource("a/b", read=lambda records, split: iter(()), splits={"train": "train"})
    assert source.describe("train") == "a/b (split train)"
    assert source.load_arguments("train") == {"split": "train"}
    with pytest.raises(ValueError, match=r"no split \['test'\]"):
        registry.register_dataset("toy_hub", splits={"train": "a", "test": "b"}, hub=source)(
            lambda path, split: iter(())
        )
    with pytest.raises(ValueError, match="given as hub split and file"):
        HubSource("a/b", read=source.read, splits={"x": "x"}, files={"x": "x.json"})
