"""Inject MoRE layers into a Hugging Face causal LM and manage routers, quotas and importance.

Only router weights (and, with ``output_scale="learnable"``, one scalar per matrix) are
trainable; they are what clients exchange. Their shapes depend only on the pool, never on the
quotas, so every client always sends tensors of one fixed shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from smartfed.errors import ConfigError, PoolError
from smartfed.importance.scores import get_score
from smartfed.pool import LoraPool
from smartfed.tuners.more.config import MoreConfig
from smartfed.tuners.more.layer import MoreLinear
from smartfed.utils.io import atomic_path, write_json_atomic

ROUTER_WEIGHTS_NAME = "routers.safetensors"
MORE_CONFIG_NAME = "more_config.json"


@dataclass
class ImportanceStats:
    """Importance measured since the last reset, one entry per matrix (``matrix_names`` order)."""

    matrix: np.ndarray  # (P,) mean per-token matrix score
    experts: list[np.ndarray]  # P arrays (M_ℓ,) mean per-token expert score
    selection_rate: list[np.ndarray]  # P arrays (M_ℓ,) fraction of tokens that selected expert j
    mean_gate: list[np.ndarray]  # P arrays (M_ℓ,) mean renormalised gate ĝ_j (0 if not selected)
    tokens: int  # real (non-padding) tokens seen per matrix


class MoreModel(nn.Module):
    """A causal LM whose pool-adapted linear layers route among frozen rank-1 experts."""

    def __init__(self, model: nn.Module, pool: LoraPool, config: MoreConfig | None = None):
        super().__init__()
        self.config = config or MoreConfig()
        self.pool = pool
        self.model = model
        pool.validate_against(model)
        names = pool.module_names()
        if self.config.target_modules is not None:
            wanted = set(self.config.target_modules)
            names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
            if not names:
                raise ConfigError(
                    f"target_modules {sorted(wanted)} match no matrix adapted by the pool "
                    f"({', '.join(pool.names)})"
                )
        self.matrix_names: list[str] = names
        self.expert_owners: dict[str, tuple[tuple[str, int], ...]] = {}
        model.requires_grad_(False)
        scorer = get_score(self.config.importance_score)
        for name in names:
            experts = pool.experts(name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            layer = MoreLinear(
                getattr(parent, child),
                experts.expert_A,
                experts.expert_B,
                top_k=self.config.top_k,
                output_scale=self.config.output_scale,
                router_init_std=self.config.router_init_std,
                scorer=scorer,
            )
            setattr(parent, child, layer)
            self.expert_owners[name] = experts.owners

    # ------------------------------------------------------------------ access
    def more_layers(self) -> dict[str, MoreLinear]:
        return {name: self.model.get_submodule(name) for name in self.matrix_names}

    @property
    def capacities(self) -> np.ndarray:
        """M_ℓ per matrix."""
        return np.array(
            [layer.num_experts for layer in self.more_layers().values()], dtype=np.int64
        )

    def forward(self, *args, **kwargs):
        mask = kwargs.get("attention_mask")
        token_mask = mask.bool() if mask is not None else None
        for layer in self.more_layers().values():
            layer.token_mask = token_mask
        try:
            return self.model(*args, **kwargs)
        finally:
            for layer in self.more_layers().values():
                layer.token_mask = None

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ routers
    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable, communicated state: ``<matrix>.router.weight`` (+ ``.output_scale``)."""
        return {
            name: param.detach().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }

    def load_router_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise PoolError(
                f"router state does not match this MoRE model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]} (built for another pool or config?)"
            )
        with torch.no_grad():
            for name, param in params.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise PoolError(
                        f"router '{name}' has shape {tuple(state[name].shape)}, this model expects "
                        f"{tuple(param.shape)} (built for another pool?)"
                    )
                param.copy_(state[name].to(param.device, param.dtype))

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ quotas
    def get_quotas(self) -> np.ndarray:
        return np.array([layer.k for layer in self.more_layers().values()], dtype=np.int64)

    def set_quotas(self, quotas: np.ndarray | list[int]) -> None:
        quotas = np.asarray(quotas)
        if quotas.shape != (len(self.matrix_names),):
            raise ValueError(f"expected {len(self.matrix_names)} quotas, got shape {quotas.shape}")
        for layer, k in zip(self.more_layers().values(), quotas, strict=True):
            layer.set_quota(int(k))

    # ------------------------------------------------------------------ importance
    def track_importance(self, enabled: bool = True) -> None:
        for layer in self.more_layers().values():
            layer.track_importance = enabled

    def read_importance(self, reset: bool = True) -> ImportanceStats:
        layers = list(self.more_layers().values())
        tokens = max(layer.importance_tokens for layer in layers)
        denom = [max(layer.importance_tokens, 1) for layer in layers]
        stats = ImportanceStats(
            matrix=np.array(
                [layer.importance_sum / d for layer, d in zip(layers, denom, strict=True)]
            ),
            experts=[
                (layer.expert_importance_sum / d).numpy()
                for layer, d in zip(layers, denom, strict=True)
            ],
            selection_rate=[
                (layer.expert_selections / d).numpy()
                for layer, d in zip(layers, denom, strict=True)
            ],
            mean_gate=[
                (layer.expert_gate_sum / d).numpy() for layer, d in zip(layers, denom, strict=True)
            ],
            tokens=tokens,
        )
        if reset:
            for layer in layers:
                layer.reset_importance()
        return stats

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``routers.safetensors`` + ``more_config.json`` (with the pool's fingerprint)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / ROUTER_WEIGHTS_NAME) as tmp:
            save_file(
                {k: v.contiguous() for k, v in self.router_state_dict().items()},
                str(tmp),
                metadata={"format": "pt", "pool_fingerprint": self.pool.fingerprint()},
            )
        write_json_atomic(
            directory / MORE_CONFIG_NAME,
            {
                "more_config": self.config.to_dict(),
                "pool": {
                    "fingerprint": self.pool.fingerprint(),
                    "modules": [{"name": a.name, "source": a.source} for a in self.pool.adapters],
                },
                "matrices": self.matrix_names,
                "capacities": self.capacities.tolist(),
                "quotas": self.get_quotas().tolist(),
            },
        )
        return directory

    @staticmethod
    def _read_saved(directory: Path, pool: LoraPool) -> dict:
        config_path = directory / MORE_CONFIG_NAME
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PoolError(
                f"no {MORE_CONFIG_NAME} in {directory}: not a SmartFed router folder"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise PoolError(f"cannot read {config_path}: {exc}") from None
        if saved.get("pool", {}).get("fingerprint") != pool.fingerprint():
            recorded = ", ".join(m["name"] for m in saved.get("pool", {}).get("modules", []))
            raise PoolError(
                f"{config_path}: routers were trained on pool [{recorded}] "
                f"(fingerprint {str(saved.get('pool', {}).get('fingerprint'))[:12]}), but the "
                f"given pool [{', '.join(pool.names)}] has fingerprint {pool.fingerprint()[:12]}: "
                "load them with the same pool modules"
            )
        return saved

    @classmethod
    def from_pretrained(cls, model: nn.Module, pool: LoraPool, directory: str | Path) -> MoreModel:
        """Rebuild MoRE on ``model`` + ``pool``; load routers and quotas from ``directory``."""
        directory = Path(directory)
        saved = cls._read_saved(directory, pool)
        config = MoreConfig.from_dict(
            saved["more_config"], source=str(directory / MORE_CONFIG_NAME)
        )
        more = cls(model, pool, config)
        more.load_pretrained_state(directory)
        return more

    def load_pretrained_state(self, directory: str | Path) -> None:
        """Load routers and quotas saved by :meth:`save_pretrained` into this model."""
        directory = Path(directory)
        saved = self._read_saved(directory, self.pool)
        if saved.get("matrices") != self.matrix_names:
            raise PoolError(
                f"{directory / MORE_CONFIG_NAME}: matrix list differs from the one this pool yields"
            )
        weights = directory / ROUTER_WEIGHTS_NAME
        try:
            state = load_file(str(weights))
        except (OSError, Exception) as exc:  # safetensors raises its own error type
            raise PoolError(f"cannot read router weights {weights}: {exc}") from None
        self.load_router_state_dict(state)
        self.set_quotas(saved["quotas"])

    def unload(self) -> nn.Module:
        """Put the original linear layers back and return the plain base model."""
        for name in self.matrix_names:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, getattr(parent, child).base_layer)
        return self.model
