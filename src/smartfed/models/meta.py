"""A base model's architecture without its weights: its config, and an empty (meta) model.

``smartfed run --dry_run`` builds the run's method on a model whose tensors live on PyTorch's
``meta`` device: they have shapes and dtypes but no storage, so a 7B model costs nothing to
"load", and parameter counts and exchanged shapes come from the real method code.

The config is read from the same sources as :func:`~smartfed.models.loading.load_base_model`:
a Hugging Face folder's ``config.json``, a hub id (from the local hub cache when offline), or
for a GGUF file its de-quantised cache's ``config.json`` if one exists, else the GGUF header
(transformers reads the metadata only; no tensor is de-quantised).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from smartfed.errors import ModelLoadError
from smartfed.models.loading import _gguf_cache_dir, resolve_model_source
from smartfed.models.memory import DTYPE_BYTES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_config(name_or_path: str) -> PretrainedConfig:
    """The architecture config of ``--model_name_or_path``, reading no weights."""
    source = resolve_model_source(name_or_path)
    try:
        if source.kind == "gguf":
            for name in DTYPE_BYTES:  # a cached de-quantised copy has a plain config.json
                cached = _gguf_cache_dir(source, getattr(torch, name))
                if (cached / "config.json").is_file():
                    return AutoConfig.from_pretrained(cached)
            location = Path(source.location)
            return AutoConfig.from_pretrained(str(location.parent), gguf_file=location.name)
        return AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not read the config of model '{name_or_path}': {_first_line(exc)}"
        ) from exc


def meta_base_model(config: PretrainedConfig, dtype: str) -> PreTrainedModel:
    """The causal LM of ``config`` with every tensor on the meta device, in ``dtype`` (a
    ``--dtype`` name), frozen, in eval mode."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    chosen = getattr(torch, dtype)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=chosen)
    except ValueError as exc:
        raise ModelLoadError(
            f"cannot build a causal LM from config {getattr(config, 'model_type', '?')!r}: "
            f"{_first_line(exc)}"
        ) from exc
    model.requires_grad_(False)
    model.eval()
    return model
