"""Shared fixtures: a tiny random LLaMA, real PEFT LoRA adapters saved to disk, and a tiny
federated setup (tiny model folder, two adapters, a tiny JSONL task) for runs and benches."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from smartfed.assembly.config import SettingValues
from smartfed.engine.config import RunConfig
from smartfed.testing import TINY, make_tiny_llama, write_random_adapter
from tests.time_budget import (  # noqa: F401 (the budget's hooks, active for the whole suite)
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_makereport,
)

pytest_plugins = ["pytester"]  # tests/test_time_budget.py runs pytest on planted tests

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (`make test-fast`: -n 2) each worker keeps to one core: the tiny models'
    # matmuls gain nothing from more intra-op threads, and two workers of two threads each would
    # fight over two cores. A run without -n keeps torch's default.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _offline_hub_datasets(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hub copies of registered datasets come through `datasets` (smartfed.data.hub): tests never
    reach the network nor read a developer's Hugging Face cache, where a cached full dataset
    would replace a bundled subset and change the counts tests check. Set before any test
    imports `datasets`, which reads both variables on import."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf_datasets_cache"))
    os.environ.pop("SMARTFED_HUB_MIRROR", None)


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "SMARTFED_DATA_DIR"  # the variable smartfed.data.registry reads too
# What the tests of the full data read: a folder missing one of these is not the full data.
FULL_DATA = ("gsm8k/train.jsonl", "mgsm/mgsm_zh.tsv", "humaneval", "mbpp", "gsm_hard", "math23k")


def full_data_dir() -> tuple[Path | None, str]:
    """The full data folder ($SMARTFED_DATA_DIR, else ../shared/data beside the repository),
    or None and why not."""
    env = os.environ.get(DATA_DIR_ENV)
    folder = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    source = f"${DATA_DIR_ENV}={env}" if env else f"{folder} (../shared/data)"
    missing = [name for name in FULL_DATA if not (folder / name).exists()]
    if not missing:
        return folder, ""
    return None, (
        f"no full data folder: {source} lacks {', '.join(missing)}; set {DATA_DIR_ENV} to a "
        "folder laid out like ../shared/data (see smartfed.data.registry) to run this test"
    )


@pytest.fixture(scope="session")
def needs_data() -> Path:
    """The full (read-only) data folder; skips the test, saying what to set, without one."""
    folder, reason = full_data_dir()
    if folder is None:
        pytest.skip(reason)
    return folder


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    return make_tiny_llama()


def train_steps(model: torch.nn.Module, input_ids: torch.Tensor, steps: int = 5) -> list[float]:
    """A few AdamW steps (lr 5e-2) on the language-model loss of ``input_ids``, over the
    parameters that require grad; returns the loss of each step."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


AdapterFactory = Callable[..., Path]


@pytest.fixture
def make_adapter(tmp_path: Path) -> AdapterFactory:
    """Train-free real PEFT adapters: random A and B (init_lora_weights=False), saved by PEFT."""

    counter = iter(range(1000))

    def factory(
        name: str | None = None,
        *,
        r: int = 4,
        alpha: float = 8,
        targets: tuple[str, ...] = ("q_proj", "v_proj"),
        seed: int | None = None,
        **lora_kwargs,
    ) -> Path:
        index = next(counter)
        name = name or f"adapter{index}"
        out = tmp_path / "adapters" / name
        # A fresh tiny LLaMA (it seeds torch itself); the adapter's draw is seeded after it.
        seed = 1000 + (seed if seed is not None else index)
        write_random_adapter(
            out, make_tiny_llama(), rank=r, alpha=alpha, targets=targets, seed=seed, **lora_kwargs
        )
        return out

    return factory


@pytest.fixture
def input_ids() -> torch.Tensor:
    torch.manual_seed(123)
    return torch.randint(0, TINY["vocab_size"], (2, 7))


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (no merges) with chat special tokens: real, tiny, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    for token in specials:
        vocab[token] = len(vocab)
    assert len(vocab) <= TINY["vocab_size"]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """The tiny LLaMA and tokenizer saved as a normal Hugging Face model folder."""
    out = tmp_path / "tiny-llama"
    make_tiny_llama().save_pretrained(out)
    make_tiny_tokenizer().save_pretrained(out)
    return out


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
        base = dict(
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
            # The paper's router, which most tests' size formulas are written for (SmartFed's
            # default, diag_lowrank, has its own tests and runs in the smoke integration test).
            router="linear",
            eval_samples=8,
            eval_batch_size=4,
            output_dir=str(tmp_path / "run"),
        )
        # The base values act like a preset (method settings apply where the method declares
        # them); a test's overrides are explicit, as flags would be.
        values = SettingValues()
        values.add(base, "tiny_run_config", from_preset=True)
        values.add(overrides, "test")
        return values.config_for()

    return factory
