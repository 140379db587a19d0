"""Base model loading (hub ids, local Hugging Face folders, GGUF files, the bundled default),
and where and in what precision it runs (device, dtype, autocast, 4-bit)."""

from smartfed.models.device import (
    autocast,
    check_load_in_4bit,
    dtype_name,
    model_autocast,
    model_device,
    model_dtype,
    resolve_device,
    to_device,
    torch_dtype,
)
from smartfed.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    enable_gradient_checkpointing,
    find_default_gguf,
    load_base_model,
    resolve_model_source,
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "autocast",
    "check_load_in_4bit",
    "dtype_name",
    "enable_gradient_checkpointing",
    "find_default_gguf",
    "load_base_model",
    "model_autocast",
    "model_device",
    "model_dtype",
    "resolve_device",
    "resolve_model_source",
    "to_device",
    "torch_dtype",
]
