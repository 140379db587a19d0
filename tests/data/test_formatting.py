"""Chat-template encoding with prompt masking, collation and the batch stream."""

from __future__ import annotations

import pytest
import torch

from smartfed.data import (
    IGNORE_INDEX,
    BatchStream,
    Example,
    collate,
    encode_example,
    encode_examples,
    load_examples,
)
from smartfed.errors import ConfigError

from ..conftest import make_tiny_tokenizer

EXAMPLE = Example(prompt="What is 2+3?", response="2+3 = 5.\nThe answer is 5.", meta={})


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def _learned_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])


def test_prompt_tokens_are_masked_exactly(tokenizer) -> None:
    row = encode_example(tokenizer, EXAMPLE, max_seq_len=512)
    assert row is not None and len(row["input_ids"]) == len(row["labels"])
    assert _learned_text(tokenizer, row) == EXAMPLE.response + "<|im_end|>\n"
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": EXAMPLE.prompt}], add_generation_prompt=True, tokenize=False
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert IGNORE_INDEX not in row["labels"][n_prompt:]
    assert tokenizer.decode(row["input_ids"]) == (
        f"<|im_start|>user\n{EXAMPLE.prompt}<|im_end|>\n"
        f"<|im_start|>assistant\n{EXAMPLE.response}<|im_end|>\n"
    )


def test_gsm8k_record_masking(tokenizer) -> None:
    example = load_examples("gsm8k", "test", limit=1)[0]
    row = encode_example(tokenizer, example, max_seq_len=4096)
    assert _learned_text(tokenizer, row) == example.response + "<|im_end|>\n"


def test_truncation_keeps_prompt_start_and_drops_response_less_rows(tokenizer) -> None:
    full = encode_example(tokenizer, EXAMPLE, max_seq_len=512)
    n_prompt = full["labels"].count(IGNORE_INDEX)
    cut = encode_example(tokenizer, EXAMPLE, max_seq_len=n_prompt + 3)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 3]
    assert sum(t != IGNORE_INDEX for t in cut["labels"]) == 3
    assert encode_example(tokenizer, EXAMPLE, max_seq_len=n_prompt) is None

    long_prompt = Example(prompt="x" * (n_prompt + 50), response="ok", meta={})
    result = encode_examples(tokenizer, [EXAMPLE, long_prompt, EXAMPLE], max_seq_len=n_prompt + 3)
    assert (len(result), result.dropped, result.truncated, result.kept) == (2, 1, 2, [0, 2])
    assert result.summary()["max_length"] == n_prompt + 3
    with pytest.raises(ConfigError, match="no response token"):
        encode_examples(tokenizer, [long_prompt], max_seq_len=n_prompt + 3)
    with pytest.raises(ConfigError, match="max_seq_len"):
        encode_example(tokenizer, EXAMPLE, max_seq_len=1)


def test_fallback_when_prompt_rendering_is_not_a_prefix() -> None:
    tokenizer = make_tiny_tokenizer()
    # The generation prompt differs from how an assistant turn is rendered.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}:\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    row = encode_example(tokenizer, EXAMPLE, max_seq_len=512)
    assert tokenizer.decode(row["input_ids"]).startswith(
        f"<|im_start|>user:\n{EXAMPLE.prompt}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _learned_text(tokenizer, row) == EXAMPLE.response + "<|im_end|>"


def test_plain_format_without_chat_template() -> None:
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    row = encode_example(tokenizer, EXAMPLE, max_seq_len=512)
    assert _learned_text(tokenizer, row) == EXAMPLE.response + "<|im_end|>"
    assert tokenizer.decode(row["input_ids"]).startswith(EXAMPLE.prompt + "\n")


def test_collate_pads_right(tokenizer) -> None:
    rows = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ]
    batch = collate(rows, pad_token_id=99)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (2, 3) and t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError):
        collate([], pad_token_id=0)


def _rows(n: int) -> list[dict[str, list[int]]]:
    return [{"input_ids": [i] * (1 + i % 4), "labels": [i] * (1 + i % 4)} for i in range(n)]


def _draw(stream: BatchStream, k: int) -> list[torch.Tensor]:
    return [stream.next_batch()["input_ids"] for _ in range(k)]


def test_batch_stream_is_reproducible() -> None:
    rows = _rows(10)
    a, b = _draw(BatchStream(rows, 4, seed=7), 8), _draw(BatchStream(rows, 4, seed=7), 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = _draw(BatchStream(rows, 4, seed=8), 8)
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_batch_stream_epochs_and_resume() -> None:
    rows = _rows(10)
    stream = BatchStream(rows, 5, seed=3)
    seen = [stream.next_indices() for _ in range(4)]
    assert sorted(seen[0] + seen[1]) == list(range(10))  # one epoch: every row once
    assert sorted(seen[2] + seen[3]) == list(range(10))
    assert seen[0] + seen[1] != seen[2] + seen[3]  # reshuffled with seed + epoch
    assert stream.epoch == 1 and stream.batches_drawn == 4

    uneven = BatchStream(rows, 4, seed=3)
    drawn = [uneven.next_indices() for _ in range(6)]
    resumed = BatchStream(rows, 4, seed=3, start_batch=3)
    assert [resumed.next_indices() for _ in range(3)] == drawn[3:]
    assert all(len(b) == 4 for b in drawn)

    tiny = BatchStream(rows[:3], 8, seed=0, pad_token_id=0)
    batch = tiny.next_batch()
    assert batch["input_ids"].shape[0] == 8  # rows repeat when the partition is small
    assert next(iter(tiny))["labels"].shape[0] == 8


def test_batch_stream_errors() -> None:
    with pytest.raises(ConfigError):
        BatchStream([], 4, seed=0)
    with pytest.raises(ConfigError):
        BatchStream(_rows(3), 0, seed=0)
