"""The plumbing every pool tuner shares (PEFT-style: config / layer / model per method on top).

A pool tuner wraps a Hugging Face causal LM: every linear layer that some pool module adapts
(optionally restricted by ``target_modules``) is replaced by a tuner layer built by the
subclass's :meth:`PoolTuner.make_layer`; the base model is frozen and only the tuner's own small
parameters train. This module does, once for MoRE, MoLE and LoRAHub: matrix selection, freezing,
injection and unload, the forward that tells layers which tokens are padding, the trainable
state (named exactly as it is exchanged), and a fingerprinted save / load that refuses a folder
written for another pool.

Saved folder: ``<weights_name>`` (safetensors, the pool fingerprint in its metadata) and
``<config_name>`` (json: ``{<config_key>: config, "pool": {fingerprint, modules: [{name,
source}]}, "matrices": [...], **save_extras()}``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import LoraPool
from smartfed.utils.io import atomic_path, write_json_atomic


# ---------------------------------------------------------------------- config
@dataclass
class TunerConfig:
    """Base of the tuner configs: validated on construction, read back from saved json.

    target_modules: restrict the tuner to these short module names (e.g. ["q_proj"]); None =
        every matrix some pool module adapts. Keyword-only, so subclasses keep their own field
        order for positional use.
    """

    kind: ClassVar[str] = "tuner"  # in messages: "unknown MoRE config field(s) ..."
    # Fields older versions wrote that no longer exist: dropped when reading a saved config.
    retired_fields: ClassVar[tuple[str, ...]] = ()

    target_modules: list[str] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            if (
                isinstance(self.target_modules, str)
                or not self.target_modules
                or not all(isinstance(t, str) for t in self.target_modules)
            ):
                raise ConfigError("target_modules must be a non-empty list of module names or null")
            self.target_modules = list(self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        data = {k: v for k, v in data.items() if k not in cls.retired_fields}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown {cls.kind} config field(s) {', '.join(unknown)}; "
                f"expected {', '.join(sorted(known))}"
            )
        return cls(**data)


def select_matrices(pool: LoraPool, target_modules: list[str] | None) -> list[str]:
    """The pool-adapted matrices to wrap, restricted to ``target_modules`` short names if given."""
    names = pool.module_names()
    if target_modules is None:
        return names
    wanted = set(target_modules)
    names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
    if not names:
        raise ConfigError(
            f"target_modules {sorted(wanted)} match no matrix adapted by the pool "
            f"({', '.join(pool.names)})"
        )
    return names


def pool_record(pool: LoraPool) -> dict[str, Any]:
    return {
        "fingerprint": pool.fingerprint(),
        "modules": [{"name": a.name, "source": a.source} for a in pool.adapters],
    }


# ---------------------------------------------------------------------- tuner
class PoolTuner(nn.Module):
    """A causal LM whose pool-adapted linear layers are replaced by tuner layers.

    Subclasses set the class attributes below and implement :meth:`make_layer`; optional hooks:
    :meth:`build_shared` (state all layers share, made before injection), :meth:`save_extras`
    and :meth:`load_extras` (more entries in the saved json).
    """

    config_class: ClassVar[type[TunerConfig]]
    config_key: ClassVar[str]  # key of the config in the saved json, e.g. "more_config"
    weights_name: ClassVar[str]  # e.g. "routers.safetensors"
    config_name: ClassVar[str]  # e.g. "more_config.json"
    what: ClassVar[str]  # in messages, e.g. "MoRE routers"
    # Config fields that decide what the saved tensors mean: a folder saved with other values
    # is refused even when the tensor shapes happen to agree.
    state_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, pool: LoraPool, config: TunerConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.config_class()
        self.pool = pool
        self.model = model
        pool.validate_against(model)
        self.matrix_names: list[str] = select_matrices(pool, self.config.target_modules)
        model.requires_grad_(False)
        self.build_shared()
        # A plain dict, not a ModuleDict: the layers are registered once, inside self.model.
        self._layers: dict[str, nn.Module] = {}
        for name in self.matrix_names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = self.make_layer(name, getattr(parent, child))
            setattr(parent, child, layer)
            self._layers[name] = layer

    # ------------------------------------------------------------------ subclass hooks
    def make_layer(self, name: str, base_layer: nn.Module) -> nn.Module:
        """The tuner layer replacing ``base_layer`` (matrix ``name``); keeps it as .base_layer."""
        raise NotImplementedError

    def build_shared(self) -> None:
        """Create state shared by all layers; runs after freezing, before any make_layer."""

    def save_extras(self) -> dict[str, Any]:
        """More json entries for :meth:`save_pretrained`."""
        return {}

    def load_extras(self, saved: dict[str, Any]) -> None:
        """Apply the extras of a saved json (after the trainable state is loaded)."""

    # ------------------------------------------------------------------ access
    def tuner_layers(self) -> dict[str, nn.Module]:
        """The injected layers by matrix name (``matrix_names`` order); empty after unload."""
        return dict(self._layers)

    def forward(self, *args, **kwargs):
        """Run the wrapped model; layers see ``token_mask`` (padding False) during the call."""
        mask = kwargs.get("attention_mask")
        token_mask = mask.bool() if mask is not None else None
        layers = list(self._layers.values())
        for layer in layers:
            layer.token_mask = token_mask
        try:
            return self.model(*args, **kwargs)
        finally:
            for layer in layers:
                layer.token_mask = None

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def unload(self) -> nn.Module:
        """Put the original linear layers back and return the plain base model."""
        for name, layer in self._layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, layer.base_layer)
        self._layers = {}
        return self.model

    # ------------------------------------------------------------------ trainable state
    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The tuner's own parameters, named as saved and exchanged.

        Per layer ``<matrix>.<parameter>`` (everything but its frozen ``base_layer``), the same
        names as in ``self.model.named_parameters()``; plus the parameters of modules the tuner
        registers next to the model (LoRAHub's ``lorahub.weights``). Frozen experts are
        buffers and never appear. A parameter with ``requires_grad`` off (a method that does not
        train it) still belongs to the state: it is saved and loaded.
        """
        params: dict[str, nn.Parameter] = {}
        for name, layer in self._layers.items():
            for pname, param in layer.named_parameters():
                if not pname.startswith("base_layer."):
                    params[f"{name}.{pname}"] = param
        for child_name, child in self.named_children():
            if child is not self.model:
                for pname, param in child.named_parameters():
                    params[f"{child_name}.{pname}"] = param
        return params

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached copies of :meth:`trainable_parameters`."""
        return {name: p.detach().clone() for name, p in self.trainable_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters()
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise PoolError(
                f"{self.what} state must hold exactly this model's tensors: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]} (built for another pool or config?)"
            )
        for name, param in params.items():
            if tuple(state[name].shape) != tuple(param.shape):
                raise PoolError(
                    f"'{name}' has shape {tuple(state[name].shape)}, this model expects "
                    f"{tuple(param.shape)} (built for another pool or config?)"
                )
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name].to(param.device, param.dtype))

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values() if p.requires_grad)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the trainable state and the json record (both carry the pool fingerprint)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / self.weights_name) as tmp:
            save_file(
                {k: v.cpu().contiguous() for k, v in self.trainable_state_dict().items()},
                str(tmp),
                metadata={"format": "pt", "pool_fingerprint": self.pool.fingerprint()},
            )
        write_json_atomic(
            directory / self.config_name,
            {
                self.config_key: self.config.to_dict(),
                "pool": pool_record(self.pool),
                "matrices": self.matrix_names,
                **self.save_extras(),
            },
        )
        return directory

    @classmethod
    def _read_record(cls, directory: Path, pool: LoraPool) -> dict[str, Any]:
        config_path = directory / cls.config_name
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PoolError(
                f"no {cls.config_name} in {directory}: not a SmartFed {cls.what} folder"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PoolError(f"cannot read {config_path}: {exc}") from None
        recorded_pool = saved.get("pool") or {}
        if recorded_pool.get("fingerprint") != pool.fingerprint():
            recorded = ", ".join(m.get("name", "?") for m in recorded_pool.get("modules", []))
            raise PoolError(
                f"{config_path}: these {cls.what} were trained on pool [{recorded}] "
                f"(fingerprint {str(recorded_pool.get('fingerprint'))[:12]}), but the given pool "
                f"[{', '.join(pool.names)}] has fingerprint {pool.fingerprint()[:12]}: "
                "load them with the same pool modules"
            )
        if cls.config_key not in saved:
            raise PoolError(f"{config_path}: no '{cls.config_key}' entry")
        return saved

    def _apply_saved(self, directory: Path, saved: dict[str, Any]) -> None:
        config_path = directory / self.config_name
        if saved.get("matrices") != self.matrix_names:
            raise PoolError(f"{config_path}: matrix list differs from the one this pool yields")
        saved_config = self.config_class.from_dict(saved[self.config_key], source=str(config_path))
        for name in self.state_fields:
            if getattr(saved_config, name) != getattr(self.config, name):
                raise PoolError(
                    f"{config_path}: saved with {name}={getattr(saved_config, name)!r}, this "
                    f"model has {name}={getattr(self.config, name)!r}"
                )
        weights = directory / self.weights_name
        try:
            with safe_open(str(weights), framework="pt") as handle:
                metadata = handle.metadata() or {}
                state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:  # safetensors raises its own error types
            raise PoolError(f"cannot read {self.what} weights {weights}: {exc}") from None
        recorded = metadata.get("pool_fingerprint")
        if recorded is not None and recorded != self.pool.fingerprint():
            raise PoolError(
                f"{weights}: saved for pool fingerprint {recorded[:12]}, the given pool has "
                f"{self.pool.fingerprint()[:12]}: load them with the same pool modules"
            )
        self.load_trainable_state_dict(state)
        self.load_extras(saved)

    def load_pretrained_state(self, directory: str | Path) -> None:
        """Load what :meth:`save_pretrained` wrote into this (already built) tuner."""
        directory = Path(directory)
        self._apply_saved(directory, self._read_record(directory, self.pool))

    @classmethod
    def from_pretrained(cls, model: nn.Module, pool: LoraPool, directory: str | Path) -> Self:
        """Rebuild the tuner on ``model`` + ``pool`` with the saved config and load its state."""
        directory = Path(directory)
        saved = cls._read_record(directory, pool)
        config = cls.config_class.from_dict(
            saved[cls.config_key], source=str(directory / cls.config_name)
        )
        tuner = cls(model, pool, config)
        tuner._apply_saved(directory, saved)
        return tuner
