"""A run directory as a plain ``transformers`` model: the base model with the method's layers in it.

Every method keeps its layers *inside* the base model (PEFT's LoRA layers, SmartFed's, MoLE's and
LoRAHub's tuner layers replace the adapted ``nn.Linear`` modules in place), so the base
``PreTrainedModel`` itself is the run's model: its ``forward``, ``generate`` and
``transformers.pipeline`` go through them. The wrappers around it (``PeftModel``, ``PoolTuner``)
only add training-time bookkeeping (padding masks for importance and usage statistics), which
inference does not need.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smartfed.assembly.runtime import load_finished_run
from smartfed.errors import ConfigError
from smartfed.tuners.base import PoolTuner


def inference_model(model: nn.Module) -> PreTrainedModel:
    """The ``PreTrainedModel`` inside a method's model (a ``PeftModel`` or a pool tuner).

    A pool tuner's shared state that lives next to the model (LoRAHub's module weights) is
    attached to it as a submodule (``smartfed_<name>``), so ``model.to(...)`` moves it too."""
    if isinstance(model, PoolTuner):
        inner = model.model
        for name, child in model.named_children():
            if child is not inner:
                inner.add_module(f"smartfed_{name}", child)
    else:
        get_base = getattr(model, "get_base_model", None)  # peft.PeftModel
        inner = get_base() if callable(get_base) else model
    if not isinstance(inner, PreTrainedModel):
        raise ConfigError(
            f"the run's model is a {type(inner).__name__}, not a transformers PreTrainedModel"
        )
    inner.eval()
    return inner


def load_run(
    run_dir: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    model_name_or_path: str | None = None,
    pool_manifest: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a finished run, ready for ``model.generate`` and
    ``transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)``.

    ``device``: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``dtype``: the base
    model's precision (default: the run's ``--dtype``); ``model_name_or_path``: another copy of
    the run's base model (e.g. the folder ``smartfed export-base`` writes); ``pool_manifest``: an
    extra manifest naming the run's pool modules. The run's description (method, task, pool,
    base model) is on ``model.smartfed_run``.
    """
    model, tokenizer, _ = open_run(
        run_dir,
        device=device,
        dtype=dtype,
        model_name_or_path=model_name_or_path,
        pool_manifest=pool_manifest,
    )
    return model, tokenizer


def open_run(
    run_dir: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    model_name_or_path: str | None = None,
    pool_manifest: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Any]:
    """:func:`load_run` plus the :class:`~smartfed.assembly.runtime.FinishedRun` it came from."""
    run = load_finished_run(
        str(run_dir),
        model_override=model_name_or_path,
        pool_manifest=pool_manifest,
        device=device,
        dtype=dtype,
    )
    model = inference_model(run.method.model)
    model.smartfed_run = dict(run.description)
    return model, run.tokenizer, run
