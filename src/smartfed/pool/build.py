"""Build a pool module: train a plain PEFT LoRA on a dataset and register it in a manifest.

The output is an ordinary PEFT adapter folder (``save_pretrained``: adapter_config.json +
adapter_model.safetensors) plus a manifest entry whose ``recipe`` records how it was made
(data, steps, hyper-parameters, initial and final loss, base model fingerprint), so every
committed or shared module can be rebuilt with the same command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from smartfed import __version__
from smartfed.errors import ConfigError
from smartfed.pool.registry import PoolEntry, add_manifest_entry
from smartfed.utils.io import write_dir_atomic


def user_manifest_path() -> Path:
    """The user's own manifest, read by every registry: ``$SMARTFED_CACHE/pool/manifest.json``."""
    from smartfed.models.loading import cache_root

    return cache_root() / "pool" / "manifest.json"


@dataclass
class BuildRecipe:
    dataset: str
    split: str = "train"
    shard: str | None = None  # "I/N": keep examples whose index % N == I
    limit: int | None = None
    rank: int = 32
    alpha: float = 64
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 2e-4
    max_seq_len: int = 256
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.alpha > 0 or not self.learning_rate > 0:
            raise ConfigError("--alpha and --learning_rate must be > 0")
        if self.shard is not None:
            try:
                index, count = (int(part) for part in self.shard.split("/"))
            except ValueError:
                raise ConfigError(
                    f"--shard must look like I/N (e.g. 0/2), got {self.shard!r}"
                ) from None
            if not 0 <= index < count:
                raise ConfigError(f"--shard {self.shard}: need 0 <= I < N")


def _select(examples: list, recipe: BuildRecipe) -> list:
    if recipe.shard:
        index, count = (int(part) for part in recipe.shard.split("/"))
        examples = [ex for i, ex in enumerate(examples) if i % count == index]
    if recipe.limit:
        examples = examples[: recipe.limit]
    if not examples:
        raise ConfigError(f"no training examples left for dataset '{recipe.dataset}'")
    return examples


def build_pool_module(
    name: str,
    recipe: BuildRecipe,
    *,
    model_name_or_path: str,
    manifest: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    skill: str = "",
    progress: bool = True,
) -> PoolEntry:
    """Train the LoRA, write the adapter folder atomically and add it to ``manifest``."""
    from peft import LoraConfig, get_peft_model

    from smartfed.data import BatchStream, encode_example, load_examples
    from smartfed.models import load_base_model

    manifest = Path(manifest) if manifest else user_manifest_path()
    output = Path(output_dir) if output_dir else manifest.parent / "modules" / name
    examples = _select(
        load_examples(recipe.dataset, recipe.split, data_dir=recipe.data_dir), recipe
    )

    torch.manual_seed(recipe.seed)
    loaded = load_base_model(model_name_or_path)
    encoded = [encode_example(loaded.tokenizer, ex, recipe.max_seq_len) for ex in examples]
    encoded = [e for e in encoded if e is not None]
    lora = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(loaded.model, lora)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate
    )
    stream = BatchStream(
        encoded, recipe.batch_size, recipe.seed, pad_token_id=loaded.tokenizer.pad_token_id
    )
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc=f"building {name}", disable=not progress)
    for _ in bar:
        loss = model(**stream.next_batch()).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    if not np.isfinite(losses).all():
        raise ConfigError(f"building {name}: the loss became non-finite; lower --learning_rate")

    window = max(1, len(losses) // 10)
    # PEFT would record the (machine-specific) folder the weights were loaded from.
    model.peft_config["default"].base_model_name_or_path = loaded.source.display_name
    write_dir_atomic(output, lambda tmp: model.save_pretrained(tmp))
    try:
        source = os.path.relpath(output, manifest.parent)
    except ValueError:  # another drive on Windows
        source = str(output)
    recipe_record: dict[str, Any] = {
        "status": "built",
        "how": "smartfed pool build",
        "dataset": recipe.dataset,
        "split": recipe.split,
        "shard": recipe.shard,
        "limit": recipe.limit,
        "examples": len(encoded),
        "steps": recipe.steps,
        "batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "max_seq_len": recipe.max_seq_len,
        "seed": recipe.seed,
        "initial_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        "base_model_fingerprint": loaded.source.fingerprint,
        "smartfed_version": __version__,
    }
    entry = PoolEntry(
        name=name,
        source=source,
        skill=skill or f"LoRA on {recipe.dataset}",
        base_model=loaded.source.display_name,
        target_modules=list(recipe.targets),
        rank=recipe.rank,
        alpha=recipe.alpha,
        recipe=recipe_record,
        manifest=str(manifest),
    )
    add_manifest_entry(manifest, entry)
    return entry
