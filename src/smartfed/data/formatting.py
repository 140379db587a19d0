"""Turn examples into token ids with loss masks, pad them into batches, and stream batches.

Encoding uses the tokenizer's chat template: the user turn is the prompt, the assistant turn the
response. Only the assistant part (response + the template's end-of-turn text) is learned; prompt
tokens get label ``-100``. Labels are *not* shifted: Hugging Face causal LMs shift them inside.

Truncation policy: sequences are cut to ``max_seq_len`` from the end, keeping the prompt's start.
An example whose prompt alone fills ``max_seq_len`` would have no response token left to learn
from; :func:`encode_example` returns ``None`` for it (it is dropped, never kept as an all ``-100``
row) and :func:`encode_examples` counts the drops and fails if every example was dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartfed.data.examples import Example
from smartfed.errors import ConfigError

IGNORE_INDEX = -100

Encoded = dict[str, list[int]]  # {"input_ids": [...], "labels": [...]}


def _ids(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_and_response_ids(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part (through the assistant header) and of the response part."""
    if getattr(tokenizer, "chat_template", None) is None:
        # Base tokenizers without a chat template: a plain "prompt\nresponse<eos>" format, with
        # the tokenizer's own special tokens (e.g. BOS) in front of the prompt.
        prompt_ids = _ids(tokenizer, example.prompt + "\n", add_special_tokens=True)
        response_ids = _ids(tokenizer, example.response)
        if tokenizer.eos_token_id is not None:
            response_ids.append(tokenizer.eos_token_id)
        return prompt_ids, response_ids

    user = {"role": "user", "content": example.prompt}
    assistant = {"role": "assistant", "content": example.response}
    # Render to text, then tokenize without adding special tokens: templates write their own BOS,
    # and this is what apply_chat_template(tokenize=True) does internally.
    prompt_text = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    prompt_ids = _ids(tokenizer, prompt_text)
    full_ids = _ids(tokenizer, full_text)
    if len(full_ids) > len(prompt_ids) and full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids) :]
    # Fallback: the prompt rendering is not a token prefix of the full conversation. This happens
    # when a template renders earlier turns differently once an assistant turn follows (e.g. it
    # drops a reasoning block or a default system text, or its generation prompt differs from the
    # assistant header) or when BPE merges tokens across the prompt/response boundary. The mask
    # boundary would then be ill-defined, so tokenize the rendered prompt and the rest of the
    # conversation separately: the model sees exactly the generation-time prompt tokens, followed
    # by the response and end-of-turn text.
    if full_text.startswith(prompt_text):
        response_text = full_text[len(prompt_text) :]
    else:
        response_text = example.response + (tokenizer.eos_token or "")
    return prompt_ids, _ids(tokenizer, response_text)


def _encode(tokenizer: Any, example: Example, max_seq_len: int) -> tuple[Encoded | None, bool]:
    """The encoded row (or None when dropped) and whether the response was cut short."""
    if max_seq_len < 2:
        raise ConfigError(f"max_seq_len must be >= 2, got {max_seq_len}")
    prompt_ids, response_ids = prompt_and_response_ids(tokenizer, example)
    if len(prompt_ids) >= max_seq_len or not response_ids:
        return None, False
    full = prompt_ids + response_ids
    input_ids = full[:max_seq_len]
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids) :]
    return {"input_ids": input_ids, "labels": labels}, len(full) > max_seq_len


def encode_example(tokenizer: Any, example: Example, max_seq_len: int) -> Encoded | None:
    """``{"input_ids", "labels"}`` for one example, prompt tokens masked with -100.

    Returns ``None`` when truncation to ``max_seq_len`` leaves no response token (see the module
    docstring).
    """
    return _encode(tokenizer, example, max_seq_len)[0]


@dataclass
class EncodedExamples:
    """The result of :func:`encode_examples`."""

    encoded: list[Encoded]
    kept: list[int]  # index into the input examples of each encoded row
    dropped: int  # examples whose prompt left no room for any response token
    truncated: int  # kept examples whose response was cut short
    max_seq_len: int
    lengths: list[int] = field(default_factory=list)  # token count of each encoded row

    def __len__(self) -> int:
        return len(self.encoded)

    def summary(self) -> dict[str, int]:
        return {
            "examples": len(self.encoded),
            "dropped": self.dropped,
            "truncated": self.truncated,
            "max_seq_len": self.max_seq_len,
            "max_length": max(self.lengths, default=0),
            "tokens": sum(self.lengths),
        }


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], max_seq_len: int
) -> EncodedExamples:
    """Encode many examples, dropping (and counting) those with no room for the response."""
    encoded: list[Encoded] = []
    kept: list[int] = []
    truncated = 0
    for index, example in enumerate(examples):
        row, was_truncated = _encode(tokenizer, example, max_seq_len)
        if row is None:
            continue
        truncated += was_truncated
        encoded.append(row)
        kept.append(index)
    dropped = len(examples) - len(encoded)
    if examples and not encoded:
        raise ConfigError(
            f"max_seq_len {max_seq_len} leaves no response token for any of the {len(examples)} "
            "examples (every prompt is at least that long); raise max_seq_len"
        )
    return EncodedExamples(
        encoded=encoded,
        kept=kept,
        dropped=dropped,
        truncated=truncated,
        max_seq_len=max_seq_len,
        lengths=[len(row["input_ids"]) for row in encoded],
    )


def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad encoded rows into ``input_ids``, ``attention_mask`` and ``labels`` (pad -100)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    width = max(len(row["input_ids"]) for row in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BatchStream:
    """Deterministic, infinite stream of collated batches over already-encoded rows.

    The rows are visited in epochs; epoch ``e`` uses the order
    ``numpy.random.default_rng(seed + e).permutation(len(encoded))``. Batches are consecutive
    slices of the concatenation of those orders, so every batch has exactly ``batch_size`` rows
    (a batch may straddle two epochs, and a partition smaller than ``batch_size`` repeats rows
    within a batch) and every row is seen once per epoch. Creating a stream copies and tokenizes
    nothing; ``start_batch`` resumes a stream as if that many batches had been drawn already.
    """

    def __init__(
        self,
        encoded: Sequence[Encoded],
        batch_size: int,
        seed: int,
        *,
        pad_token_id: int = 0,
        start_batch: int = 0,
    ) -> None:
        if len(encoded) == 0:
            raise ConfigError("BatchStream needs at least one encoded example")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise ConfigError(f"start_batch must be >= 0, got {start_batch}")
        self.encoded = encoded
        self.batch_size = batch_size
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.batches_drawn = start_batch
        position = start_batch * batch_size
        self.epoch, self._offset = divmod(position, len(encoded))
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(len(self.encoded))

    def next_indices(self) -> list[int]:
        """Indices (into ``encoded``) of the next batch; advances the stream."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            if self._offset == len(self._order):
                self.epoch += 1
                self._order = self._epoch_order(self.epoch)
                self._offset = 0
            take = min(self.batch_size - len(indices), len(self._order) - self._offset)
            indices.extend(int(i) for i in self._order[self._offset : self._offset + take])
            self._offset += take
        self.batches_drawn += 1
        return indices

    def next_batch(self) -> dict[str, Any]:
        return collate([self.encoded[i] for i in self.next_indices()], self.pad_token_id)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return self.next_batch()
