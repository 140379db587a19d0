"""A tiny federated setup: tiny LLaMA folder, two real PEFT adapters, a tiny JSONL task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from smartfed.engine.config import RunConfig


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny_arith")
    rng = random.Random(0)
    for split, count in (("train", 48), ("test", 8)):
        with (folder / f"{split}.jsonl").open("w") as handle:
            for _ in range(count):
                a, b = rng.randint(0, 9), rng.randint(0, 9)
                row = {"prompt": f"{a}+{b}=", "response": str(a + b), "bucket": (a + b) % 3}
                handle.write(json.dumps(row) + "\n")
    return str(Path(folder) / "{split}.jsonl")


@pytest.fixture
def tiny_run_config(tiny_task, tiny_model_dir, make_adapter, tmp_path):
    pool = ",".join(
        str(make_adapter(name, r=4, alpha=8, seed=i)) for i, name in enumerate(("pa", "pb"))
    )

    def factory(**overrides) -> RunConfig:
        values = dict(
            model_name_or_path=str(tiny_model_dir),
            lora_pool=pool,
            task=tiny_task,
            num_clients=4,
            sample_clients=2,
            num_rounds=3,
            local_steps=2,
            batch_size=4,
            learning_rate=5e-2,
            max_seq_len=64,
            topk_experts=3,
            eval_samples=8,
            eval_batch_size=4,
            output_dir=str(tmp_path / "run"),
        )
        values.update(overrides)
        return RunConfig(**values)

    return factory
