"""SmartFed: federated fine-tuning by routing rank-wise experts of existing LoRA modules."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_run(
    run_dir: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    model_name_or_path: str | None = None,
    pool_manifest: str | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a finished run: the base ``transformers`` ``PreTrainedModel``
    with the method's layers injected and the run's final state applied, ready for
    ``model.generate(...)`` and ``transformers.pipeline("text-generation", ...)``.

    See :func:`smartfed.hf.load_run` (imported here on first call: ``import smartfed`` stays
    free of torch)."""
    from smartfed.hf import load_run as _load_run

    return _load_run(
        run_dir,
        device=device,
        dtype=dtype,
        model_name_or_path=model_name_or_path,
        pool_manifest=pool_manifest,
    )
