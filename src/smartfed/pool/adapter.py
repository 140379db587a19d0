"""Read one PEFT LoRA adapter into plain per-matrix (A, B, scaling) triples, with validation.

PEFT's own readers are used for the files (``LoraConfig.from_pretrained``, ``load_peft_weights``),
so any adapter PEFT saved (local folder, ``.safetensors`` or ``.bin``, or a hub id) is accepted.
What SmartFed cannot decompose into rank-1 experts is refused with one clear error naming the
feature: DoRA, LoRA bias, embedding / conv LoRA, ``modules_to_save``, ``target_parameters``, ...
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from smartfed.errors import PoolError

_PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"

# Config flags whose truthy value means "not a plain LoRA": flag -> human name of the feature.
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (weight-decomposed LoRA: its magnitude vector is not a sum of rank-1 terms)",
    "lora_bias": "LoRA bias (lora_bias=True adds a trained bias to lora_B)",
    "modules_to_save": "modules_to_save (fully fine-tuned modules are not LoRA experts)",
    "target_parameters": "target_parameters (LoRA on raw nn.Parameters)",
    "layer_replication": "layer_replication",
    "trainable_token_indices": "trainable_token_indices (trainable embedding rows)",
    "use_qalora": "QALoRA",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D base layers; SmartFed adapts nn.Linear only)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
}

# Weight-key fragments that betray unsupported features, checked on the state dict itself so
# that a config that lies about them is still caught.
_UNSUPPORTED_KEYS = {
    "lora_magnitude_vector": "DoRA (lora_magnitude_vector weights)",
    "lora_embedding_A": "embedding LoRA (lora_embedding_A/B weights)",
    "lora_embedding_B": "embedding LoRA (lora_embedding_A/B weights)",
    "lora_B.bias": "LoRA bias (lora_B.bias weights)",
    "modules_to_save": "modules_to_save weights",
    "trainable_tokens": "trainable token weights",
    "base_layer": "full base-layer weights saved with the adapter (e.g. resized embeddings)",
}


@dataclass
class LoraMatrix:
    """The LoRA update of one adapted matrix: ``ΔW = scaling · B @ A``."""

    module_name: str  # name in the base model, e.g. "model.layers.0.self_attn.q_proj"
    lora_A: torch.Tensor  # (r, d_in)
    lora_B: torch.Tensor  # (d_out, r)
    alpha: float
    scaling: float

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)


@dataclass
class LoraAdapter:
    """A loaded PEFT LoRA adapter: its config facts plus one ``LoraMatrix`` per adapted matrix."""

    name: str
    source: str
    base_model_name: str | None
    use_rslora: bool
    matrices: dict[str, LoraMatrix] = field(default_factory=dict)

    @property
    def target_modules(self) -> list[str]:
        """Short names of adapted modules (``q_proj``, ``v_proj``, ...), sorted."""
        return sorted({name.rsplit(".", 1)[-1] for name in self.matrices})

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.matrices.values()})

    @property
    def alphas(self) -> list[float]:
        return sorted({m.alpha for m in self.matrices.values()})

    @property
    def num_parameters(self) -> int:
        return sum(m.lora_A.numel() + m.lora_B.numel() for m in self.matrices.values())

    def fingerprint(self) -> str:
        """sha256 over module names, scalings and tensor bytes: identifies the exact weights."""
        digest = hashlib.sha256()
        for name in sorted(self.matrices):
            mat = self.matrices[name]
            digest.update(f"{name}|{mat.scaling!r}|".encode())
            for tensor in (mat.lora_A, mat.lora_B):
                digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def validate_against(self, model: nn.Module) -> None:
        """Raise ``PoolError`` unless every adapted matrix exists in ``model`` with its shape."""
        modules = dict(model.named_modules())
        for name, mat in sorted(self.matrices.items()):
            target = modules.get(name)
            if target is None:
                short = name.rsplit(".", 1)[-1]
                raise PoolError(
                    f"adapter '{self.name}' ({self.source}) targets module '{name}', "
                    f"which the base model does not have (short name '{short}'); was it "
                    "trained for another base model (adapter says: "
                    f"{self.base_model_name or 'unknown'})?"
                )
            if not isinstance(target, nn.Linear):
                raise PoolError(
                    f"adapter '{self.name}' targets '{name}', a {type(target).__name__}; SmartFed "
                    "decomposes LoRA on nn.Linear layers only"
                )
            expected_a = (mat.rank, target.in_features)
            expected_b = (target.out_features, mat.rank)
            if tuple(mat.lora_A.shape) != expected_a or tuple(mat.lora_B.shape) != expected_b:
                raise PoolError(
                    f"adapter '{self.name}' does not fit the base model at '{name}': lora_A "
                    f"{tuple(mat.lora_A.shape)} / lora_B {tuple(mat.lora_B.shape)}, but the layer "
                    f"is {target.out_features}x{target.in_features} so expected {expected_a} / "
                    f"{expected_b}; it was trained for another base model "
                    f"(adapter says: {self.base_model_name or 'unknown'})"
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pattern_value(patterns: dict, module_name: str, default: float) -> float:
    # PEFT's own matcher, so rank_pattern / alpha_pattern resolve exactly as in PEFT.
    from peft.utils.other import get_pattern_key

    if not patterns:
        return default
    key = get_pattern_key(list(patterns.keys()), module_name)
    return patterns.get(key, default)


def _read_config(source: str, name: str):
    from peft import PeftConfig

    path = Path(source)
    if path.exists() and not (path / "adapter_config.json").is_file():
        raise PoolError(
            f"pool module '{name}': {path} has no adapter_config.json (not a PEFT adapter)"
        )
    try:
        config = PeftConfig.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        where = path / "adapter_config.json" if path.exists() else source
        raise PoolError(f"pool module '{name}': cannot read {where}: {_first_line(exc)}") from exc
    peft_type = str(getattr(config, "peft_type", "")).rsplit(".", 1)[-1]
    if peft_type != "LORA":
        raise PoolError(
            f"pool module '{name}' ({source}) is a {peft_type or 'unknown'} adapter; "
            "SmartFed needs LoRA adapters (peft_type LORA)"
        )
    for flag, feature in _UNSUPPORTED_FLAGS.items():
        if getattr(config, flag, None):
            raise PoolError(f"pool module '{name}' ({source}) uses unsupported feature: {feature}")
    bias = getattr(config, "bias", "none")
    if bias != "none":
        raise PoolError(
            f"pool module '{name}' ({source}) uses unsupported feature: trained biases "
            f"(bias='{bias}'); only bias='none' adapters decompose into rank-1 experts"
        )
    return config


def _check_declared_targets(
    config, matrices: dict[str, LoraMatrix], source: str, name: str
) -> None:
    """Refuse an adapter_config.json whose ``target_modules`` lists a module that no weight
    adapts: the summary would otherwise show only the adapted ones, and the config would
    claim more than the adapter holds (e.g. a fused ``qkv`` projection the weights lack)."""
    declared = getattr(config, "target_modules", None)
    # A regex string or "all-linear" names no modules one by one: nothing to compare.
    if not isinstance(declared, list | set | tuple):
        return
    # PEFT's rule: a target matches a module whose name is it or ends with ".<target>".
    missing = sorted(
        str(target)
        for target in declared
        if not any(m == target or m.endswith(f".{target}") for m in matrices)
    )
    if missing:
        where = Path(source) / "adapter_config.json" if Path(source).exists() else source
        adapted = ", ".join(sorted({m.rsplit(".", 1)[-1] for m in matrices}))
        raise PoolError(
            f"pool module '{name}': {where} names target_modules {', '.join(missing)}, which "
            f"its weights do not adapt (they adapt {adapted}); fix target_modules or the weights"
        )


def load_lora_adapter(source: str | Path, name: str | None = None) -> LoraAdapter:
    """Load a PEFT LoRA adapter folder (or hub id) and split it into per-matrix LoRA updates."""
    from peft.utils.save_and_load import load_peft_weights

    source = str(source)
    name = name or Path(source).name
    config = _read_config(source, name)
    try:
        state = load_peft_weights(source, device="cpu")
    except (OSError, ValueError, RuntimeError) as exc:
        raise PoolError(
            f"pool module '{name}': cannot read adapter weights from {source} "
            f"(expected adapter_model.safetensors or adapter_model.bin): {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # safetensors raises its own error type for corrupt files
        raise PoolError(
            f"pool module '{name}': unreadable adapter weights in {source}: {_first_line(exc)}"
        ) from exc

    # Named features first, so the error says "embedding LoRA" rather than "unexpected key".
    for fragment, feature in _UNSUPPORTED_KEYS.items():
        for key in state:
            if fragment in key:
                raise PoolError(
                    f"pool module '{name}' ({source}) uses unsupported feature: {feature} "
                    f"(key '{key}')"
                )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        bare = key.removeprefix(_PEFT_PREFIX)
        if bare.endswith(_A_SUFFIX):
            pairs.setdefault(bare.removesuffix(_A_SUFFIX), {})["A"] = tensor
        elif bare.endswith(_B_SUFFIX):
            pairs.setdefault(bare.removesuffix(_B_SUFFIX), {})["B"] = tensor
        else:
            raise PoolError(f"pool module '{name}' ({source}) has an unexpected weight key '{key}'")
    if not pairs:
        raise PoolError(f"pool module '{name}' ({source}) contains no LoRA weights")

    use_rslora = bool(getattr(config, "use_rslora", False))
    matrices: dict[str, LoraMatrix] = {}
    for module_name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise PoolError(
                f"pool module '{name}' ({source}): '{module_name}' has no {missing} weight"
            )
        lora_a, lora_b = pair["A"], pair["B"]
        if lora_a.dim() != 2 or lora_b.dim() != 2:
            raise PoolError(
                f"pool module '{name}' ({source}) uses unsupported feature: convolutional LoRA at "
                f"'{module_name}' (lora_A has shape {tuple(lora_a.shape)})"
            )
        if lora_b.shape[1] != lora_a.shape[0]:
            raise PoolError(
                f"pool module '{name}' ({source}): '{module_name}' has lora_A "
                f"{tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} of different ranks"
            )
        for label, tensor in (("lora_A", lora_a), ("lora_B", lora_b)):
            if not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise PoolError(
                    f"pool module '{name}' ({source}): {label} of '{module_name}' has {bad} "
                    "NaN/Inf values"
                )
        rank = int(lora_a.shape[0])
        declared_rank = int(_pattern_value(config.rank_pattern, module_name, config.r))
        if declared_rank != rank:
            raise PoolError(
                f"pool module '{name}' ({source}): '{module_name}' has rank {rank} in its weights "
                f"but adapter_config.json declares r={declared_rank}"
            )
        alpha = float(_pattern_value(config.alpha_pattern, module_name, config.lora_alpha))
        scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        matrices[module_name] = LoraMatrix(
            module_name, lora_a.float().contiguous(), lora_b.float().contiguous(), alpha, scaling
        )
    _check_declared_targets(config, matrices, source, name)
    return LoraAdapter(
        name=name,
        source=source,
        base_model_name=getattr(config, "base_model_name_or_path", None),
        use_rslora=use_rslora,
        matrices=matrices,
    )
