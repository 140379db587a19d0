"""Dataset registry, data-dir resolution and the gsm8k loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from smartfed.data import (
    DATA_DIR_ENV,
    DATASETS,
    Example,
    available_datasets,
    load_examples,
    register_dataset,
    registry,
    resolve_split_file,
)
from smartfed.data.sets.gsm8k import gsm8k_example, strip_calculator_notes
from smartfed.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def _write_gsm8k(root: Path, split: str, n: int) -> Path:
    path = root / "gsm8k" / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "question": f"What is {i}+1?",
                "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
            }
        )
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_is_registered() -> None:
    assert "gsm8k" in available_datasets()
    spec = DATASETS["gsm8k"]
    assert set(spec.splits) == {"train", "test"}
    assert spec.label_field == "answer_bucket"


def test_gsm8k_from_data_dir(needs_data: Path) -> None:
    train = load_examples("gsm8k", "train", data_dir=needs_data)
    test = load_examples("gsm8k", "test", data_dir=needs_data)
    assert (len(train), len(test)) == (7473, 1319)
    assert all(isinstance(e, Example) for e in train[:10])
    assert not any("<<" in e.response or "####" in e.response for e in train)
    assert all(e.response.endswith(f"The answer is {e.meta['answer']}.") for e in train)
    assert resolve_split_file("gsm8k", "train", data_dir=needs_data).origin == "data_dir"


def test_gsm8k_from_env(monkeypatch: pytest.MonkeyPatch, needs_data: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(needs_data))
    assert len(load_examples("gsm8k", "test")) == 1319
    assert resolve_split_file("gsm8k", "test").origin == "env"


def test_gsm8k_bundled_subset() -> None:
    resolved = resolve_split_file("gsm8k", "train")
    assert resolved.origin == "bundled"
    assert resolved.path == registry.BUNDLED_DIR / "gsm8k" / "train.jsonl"
    assert len(load_examples("gsm8k", "train")) == 512
    assert len(load_examples("gsm8k", "test")) == 128
    assert len(load_examples("gsm8k", "train", limit=7)) == 7
    assert (registry.BUNDLED_DIR / "gsm8k" / "LICENSE").is_file()
    assert (registry.BUNDLED_DIR / "README.md").is_file()


@pytest.mark.parametrize(("split", "count"), [("train", 512), ("test", 128)])
def test_bundled_subset_is_an_unchanged_prefix(split: str, count: int, needs_data: Path) -> None:
    bundled = (registry.BUNDLED_DIR / "gsm8k" / f"{split}.jsonl").read_bytes()
    full = (needs_data / "gsm8k" / f"{split}.jsonl").read_bytes()
    assert full.startswith(bundled)
    assert bundled.count(b"\n") == count and bundled.endswith(b"\n")


def test_concrete_record_rewrite() -> None:
    weng = load_examples("gsm8k", "train", limit=2)[1]
    assert weng.prompt.startswith("Weng earns $12 an hour for babysitting.")
    assert weng.response == (
        "Weng earns 12/60 = $0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $10.\n"
        "The answer is 10."
    )
    assert weng.meta == {"answer": 10, "answer_bucket": 2, "source": "gsm8k"}


def test_answer_normalisation() -> None:
    example = gsm8k_example("Q?", "He pays 3*360=<<3*360=1080>>1,080 dollars.\n#### 1,080")
    assert example.response == "He pays 3*360=1,080 dollars.\nThe answer is 1080."
    assert example.meta["answer"] == 1080 and example.meta["answer_bucket"] == 4
    negative = gsm8k_example("Q?", "It drops 5-12=<<5-12=-7>>-7.\n#### -7")
    assert negative.response.endswith("\nThe answer is -7.")
    assert negative.meta["answer"] == -7 and negative.meta["answer_bucket"] == 1
    assert strip_calculator_notes("a <<1+1=2>>2 b <<2*3=6>>6") == "a 2 b 6"


def test_data_dir_beats_env_and_env_beats_bundled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_gsm8k(tmp_path / "arg", "train", 3)
    _write_gsm8k(tmp_path / "env", "train", 5)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert len(load_examples("gsm8k", "train", data_dir=tmp_path / "arg")) == 3
    assert len(load_examples("gsm8k", "train")) == 5
    assert load_examples("gsm8k", "train")[4].response == "4+1=5\nThe answer is 5."


def test_data_dir_without_the_dataset_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="smartfed.data.registry"):
        resolved = resolve_split_file("gsm8k", "test", data_dir=tmp_path)
    assert resolved.origin == "bundled"
    assert "gsm8k/test.jsonl not found" in caplog.text and str(tmp_path) in caplog.text


def test_missing_everywhere_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "BUNDLED_DIR", tmp_path / "bundled")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError) as info:
        load_examples("gsm8k", "train", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "gsm8k/train.jsonl" in message
    assert "--data_dir" in message and f"${DATA_DIR_ENV}" in message and "bundled" in message


def test_resolution_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        load_examples("gsm8k", "train", data_dir=tmp_path / "typo")
    with pytest.raises(ConfigError, match="has no split 'dev'; splits: train, test"):
        load_examples("gsm8k", "dev")
    with pytest.raises(ConfigError, match=r"unknown dataset 'nope'; registered datasets: .*gsm8k"):
        load_examples("nope", "train")
    with pytest.raises(ConfigError, match="limit"):
        load_examples("gsm8k", "train", limit=-1)


def test_malformed_gsm8k_record_names_file_and_line(tmp_path: Path) -> None:
    path = _write_gsm8k(tmp_path, "train", 2)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"question": "Q", "answer": "no final line"}) + "\n")
    with pytest.raises(ConfigError, match=r"train\.jsonl:3: field 'answer': .*'#### N'"):
        load_examples("gsm8k", "train", data_dir=tmp_path)


def test_register_dataset_decorator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "all.txt").write_text("a=1\nb=2\n", encoding="utf-8")

    @register_dataset("toy", splits={"train": "toy/all.txt"}, label_field="key")
    def read_toy(path: Path, split: str):
        for line in path.read_text(encoding="utf-8").splitlines():
            key, value = line.split("=")
            yield Example(prompt=key, response=value, meta={"key": key, "split": split})

    assert registry.DATASETS["toy"].reader is read_toy
    examples = load_examples("toy", "train", data_dir=tmp_path)
    assert [(e.prompt, e.response, e.meta["split"]) for e in examples] == [
        ("a", "1", "train"),
        ("b", "2", "train"),
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy", splits={"train": "x"})(read_toy)
