"""The paper's tasks load from the shared data folder and produce training batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartfed.data import BatchStream, encode_example, load_examples
from smartfed.data.tasks import get_task
from smartfed.errors import ConfigError

from ..conftest import make_tiny_tokenizer


@pytest.mark.parametrize(
    ("task", "pool", "benchmark"),
    [
        ("cn_math", "cn_chat,en_math", "mgsm_zh_math23k"),
        ("math_code", "en_math,en_code", "gsm_hard_gsm8k_pal"),
        ("cn_code_offline", "cn_chat,en_code", "mbpp"),
        ("gsm8k", "smoke_math_a,smoke_math_b", "gsm8k"),
    ],
)
def test_task_loads_and_batches(task, pool, benchmark, needs_data: Path):
    spec = get_task(task)
    assert (spec.default_pool, spec.benchmark) == (pool, benchmark)
    tokenizer = make_tiny_tokenizer()
    for dataset, split in ((spec.train_dataset, spec.train_split),
                           (spec.eval_dataset, spec.eval_split)):  # fmt: skip
        examples = load_examples(dataset, split, data_dir=needs_data, limit=16)
        rows = [encode_example(tokenizer, ex, 256) for ex in examples]
        batch = BatchStream([r for r in rows if r], 4, seed=0, pad_token_id=0).next_batch()
        assert batch["input_ids"].shape[0] == 4
        assert (batch["labels"] != -100).any(dim=1).all()  # every row has response tokens


def test_cn_code_says_doit_is_absent_and_what_to_do(needs_data: Path):
    spec = get_task("cn_code")
    with pytest.raises(ConfigError, match="DoIT") as info:
        load_examples(spec.train_dataset, spec.train_split, data_dir=needs_data)
    assert "--data_dir" in str(info.value)
