"""Base model loading: hub ids, local Hugging Face folders, GGUF files and the bundled default."""

from smartfed.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    find_default_gguf,
    load_base_model,
    resolve_model_source,
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "find_default_gguf",
    "load_base_model",
    "resolve_model_source",
]
