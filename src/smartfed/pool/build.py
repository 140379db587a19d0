"""Build a pool module: train a plain PEFT LoRA on a dataset and register it in a manifest.

The output is an ordinary PEFT adapter folder (adapter_config.json + adapter_model.safetensors,
optionally stored in float16/bfloat16 to halve its size) plus a manifest entry whose ``recipe``
records how it was made (data, steps, hyper-parameters, initial and final loss, base model
fingerprint), so every committed or shared module can be rebuilt with the same command, and
whose ``sha256`` pins the written files (:mod:`smartfed.pool.pinning`).

Training checkpoints (adapter weights, optimizer state, step, losses, the recipe) are written
atomically every ``checkpoint_every`` steps to ``<output>.build/``; running the same build again
resumes from the last one, and the folder is removed once the adapter is written. A checkpoint
made by a different recipe is refused rather than silently mixed in.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from smartfed import __version__
from smartfed.errors import ConfigError
from smartfed.pool.pinning import adapter_digests
from smartfed.pool.registry import PoolEntry, add_manifest_entry, user_manifest_path
from smartfed.utils.io import write_dir_atomic, write_json_atomic

SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    save_dtype: str = "float32"  # storage dtype of the written adapter weights
    dtype: str = "float32"  # precision of the frozen base model while training (LoRA: float32)

    def __post_init__(self) -> None:
        for name in ("save_dtype", "dtype"):
            if getattr(self, name) not in SAVE_DTYPES:
                raise ConfigError(
                    f"--{name} must be one of {', '.join(SAVE_DTYPES)}, got {getattr(self, name)!r}"
                )
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


def _recipe_identity(recipe: BuildRecipe, model_fingerprint: str) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed (the data folder may move)."""
    identity = asdict(recipe)
    identity.pop("data_dir")
    if recipe.dtype == "float32":  # builds from before --dtype existed match it
        identity.pop("dtype")
    identity["targets"] = list(recipe.targets)
    identity["base_model_fingerprint"] = model_fingerprint
    return identity


class BuildCheckpoint:
    """``<output>.build/``: trainable weights, optimizer state and progress of a running build."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    def load(self, identity: dict[str, Any], model, optimizer) -> tuple[int, list[float]]:
        """Restore model and optimizer; returns (steps done, losses). (0, []) when none."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if not self.progress_path.is_file():
            return 0, []
        try:
            progress = json.loads(self.progress_path.read_text())
            saved_identity = progress["recipe"]
            step, losses = int(progress["step"]), [float(x) for x in progress["losses"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.progress_path}: unreadable build checkpoint ({exc}); delete {self.folder} "
                "to start over"
            ) from None
        if saved_identity != identity:
            changed = sorted(
                k
                for k in identity.keys() | saved_identity.keys()
                if identity.get(k) != saved_identity.get(k)
            )
            raise ConfigError(
                f"{self.folder} holds a checkpoint of a different build (differs in: "
                f"{', '.join(changed)}); delete it to start over, or rerun the same recipe"
            )
        set_peft_model_state_dict(model, load_file(self.folder / "adapter.safetensors"))
        # Saved on the device the build ran on; load_state_dict moves the state to the params'.
        state = torch.load(self.folder / "optimizer.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(state)
        return step, losses

    def save(self, identity: dict[str, Any], model, optimizer, step: int, losses: list) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = {
            k: v.detach().cpu().contiguous()
            for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
        }
        # Weights first, progress last: progress.json names a step only once its state is on disk.
        tmp = self.folder / "adapter.safetensors.tmp"
        save_file(weights, tmp)
        os.replace(tmp, self.folder / "adapter.safetensors")
        tmp = self.folder / "optimizer.pt.tmp"
        torch.save(optimizer.state_dict(), tmp)
        os.replace(tmp, self.folder / "optimizer.pt")
        write_json_atomic(self.progress_path, {"recipe": identity, "step": step, "losses": losses})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def save_adapter(model, folder: Path, dtype: torch.dtype) -> None:
    """Write ``model``'s LoRA as a PEFT adapter folder with weights stored in ``dtype``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    model.peft_config["default"].save_pretrained(folder)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    save_file(
        {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()},
        folder / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )


def build_pool_module(
    name: str,
    recipe: BuildRecipe,
    *,
    model_name_or_path: str,
    manifest: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    skill: str = "",
    progress: bool = True,
    checkpoint_every: int = 25,
    stop_after: int | None = None,
    device: str = "auto",
) -> PoolEntry | None:
    """Train the LoRA, write the adapter folder atomically and add it to ``manifest``.

    ``device``: a ``--device`` spec; the base model takes ``recipe.dtype`` and the LoRA stays
    float32. A build may resume on another device, not in another dtype (the recipe differs).

    Resumes from ``<output>.build/`` when a checkpoint of the same recipe is there.
    ``stop_after`` ends the process's work after that many total steps, leaving the checkpoint
    (for tests and for splitting a long build over sessions); it then returns None.
    """
    from peft import LoraConfig, get_peft_model

    from smartfed.data import BatchStream, encode_example, load_examples
    from smartfed.models import autocast, load_base_model, resolve_device, to_device, torch_dtype
    from smartfed.models.device import warn_if_slow_half_on_cpu

    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint_every must be >= 1, got {checkpoint_every}")
    manifest = Path(manifest) if manifest else user_manifest_path()
    output = Path(output_dir) if output_dir else manifest.parent / "modules" / name
    examples = _select(
        load_examples(recipe.dataset, recipe.split, data_dir=recipe.data_dir), recipe
    )

    target = resolve_device(device)
    warn_if_slow_half_on_cpu(target, recipe.dtype)
    torch.manual_seed(recipe.seed)
    loaded = load_base_model(model_name_or_path, dtype=recipe.dtype)
    encoded = [encode_example(loaded.tokenizer, ex, recipe.max_seq_len) for ex in examples]
    encoded = [e for e in encoded if e is not None]
    if not encoded:
        raise ConfigError(f"building {name}: no example fits --max_seq_len {recipe.max_seq_len}")
    lora = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        target_modules=list(recipe.targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    # Built on the CPU (the LoRA's init does not depend on the device), then moved; PEFT keeps
    # the LoRA in float32 on a half-precision base.
    model = get_peft_model(loaded.model, lora).to(target)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate
    )
    identity = _recipe_identity(recipe, loaded.source.fingerprint)
    checkpoint = BuildCheckpoint(output.with_name(output.name + ".build"))
    start, losses = checkpoint.load(identity, model, optimizer)
    stream = BatchStream(
        encoded,
        recipe.batch_size,
        recipe.seed,
        pad_token_id=loaded.tokenizer.pad_token_id,
        start_batch=start,
    )
    end = recipe.steps if stop_after is None else min(recipe.steps, stop_after)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=recipe.steps,
        desc=f"building {name}" + (f" (resumed at step {start})" if start else ""),
        disable=not progress,
    )
    precision = torch_dtype(recipe.dtype)
    for step in bar:
        batch = to_device(stream.next_batch(), target)
        with autocast(target, precision):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not np.isfinite(losses[-1]):
            raise ConfigError(
                f"building {name}: the loss became non-finite at step {step + 1}; "
                "lower --learning_rate"
            )
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == end:
            checkpoint.save(identity, model, optimizer, step + 1, losses)
    bar.close()
    if end < recipe.steps:
        return None

    window = max(1, len(losses) // 10)
    # PEFT would record the (machine-specific) folder the weights were loaded from.
    model.peft_config["default"].base_model_name_or_path = loaded.source.display_name
    write_dir_atomic(output, lambda tmp: save_adapter(model, tmp, SAVE_DTYPES[recipe.save_dtype]))
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
        "save_dtype": recipe.save_dtype,
        "dtype": recipe.dtype,
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
        sha256=adapter_digests(output),  # pinned: a later change to the files is refused
    )
    add_manifest_entry(manifest, entry)
    checkpoint.remove()
    return entry
