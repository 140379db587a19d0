"""SmartFed: rank-wise experts from the pool (MoRE), federated routers, EEQA quotas.

Clients train the per-matrix routers under the quota table the server sends and report the
per-matrix importance they measured; the server averages routers (FedAvg), folds importance into
an EMA and re-allocates the expert budget with EEQA (DESIGN §1.2-1.5). Ablations are settings:
``--no-enable_eeqa`` (uniform K), ``--dense`` (K_ℓ = M_ℓ: every expert, no sparsity) and
``--output_scale k|one|learnable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from smartfed.eeqa.server import next_quotas, update_importance
from smartfed.engine.method import FederatedMethod, ServerLogic
from smartfed.errors import ConfigError
from smartfed.methods.registry import register_method
from smartfed.pool import LoraPool
from smartfed.tuners.more import MoreConfig, MoreModel

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


class QuotaLogic(ServerLogic):
    """The quota table each round, and EEQA over the clients' token-weighted importance."""

    def __init__(self, capacities: np.ndarray, config: RunConfig, top_k: int):
        self.capacities = np.asarray(capacities)
        self.config = config
        self.top_k = top_k
        self.enable_eeqa = config.enable_eeqa and not config.dense
        if self.enable_eeqa and config.k_min > int(self.capacities.min()):
            # Caught here, before any round, not by EEQA after round 1's compute is spent.
            raise ConfigError(
                f"--k_min ({config.k_min}) exceeds the smallest number of experts of an adapted "
                f"matrix ({int(self.capacities.min())}): lower --k_min or use a larger pool"
            )
        self.ema_importance: np.ndarray | None = None
        self.client_importance: list[list[float]] = []
        self.quotas = self._next(completed_round=0)

    def _next(self, completed_round: int) -> np.ndarray:
        return next_quotas(
            importance=self.ema_importance,
            capacities=self.capacities,
            top_k=self.top_k,
            k_min=self.config.k_min,
            completed_round=completed_round,
            warmup_rounds=self.config.eeqa_warmup_rounds,
            enable_eeqa=self.enable_eeqa,
        )

    def round_config(self) -> dict[str, Any]:
        return {"quotas": [int(q) for q in self.quotas]}

    def check_reply(self, metrics: Mapping[str, Any]) -> str | None:
        if "importance" not in metrics:
            return "reply metrics lack 'importance'"
        importance = np.asarray(metrics["importance"], dtype=np.float64)
        if importance.shape != self.capacities.shape or not np.isfinite(importance).all():
            return "importance vector has the wrong length or non-finite values"
        if (importance < 0).any():
            return f"importance has negative values (min {importance.min():.3g})"
        return None

    def aggregate(self, metrics: list[Mapping[str, Any]], completed_round: int) -> None:
        importance = [np.asarray(m["importance"], dtype=np.float64) for m in metrics]
        self.client_importance = [imp.tolist() for imp in importance]
        self.ema_importance = update_importance(
            self.ema_importance,
            importance,
            [int(m["tokens"]) for m in metrics],
            self.config.ema_beta,
        )
        self.quotas = self._next(completed_round)

    def round_fields(self, used_config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "quotas": [int(q) for q in used_config["quotas"]],
            "next_quotas": [int(q) for q in self.quotas],
            "importance": None
            if self.ema_importance is None
            else [float(v) for v in self.ema_importance],
            "client_importance": self.client_importance,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "quotas": [int(q) for q in self.quotas],
            "ema_importance": None
            if self.ema_importance is None
            else [float(v) for v in self.ema_importance],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.quotas = np.asarray(state["quotas"], dtype=np.int64)
        ema = state.get("ema_importance")
        self.ema_importance = None if ema is None else np.asarray(ema, dtype=np.float64)


@register_method
class SmartFed(FederatedMethod):
    name = "smartfed"
    summary = "rank-wise experts from the pool, federated routers, EEQA quotas"
    reuses_pool = True

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        self.top_k = config.topk_experts
        if config.dense:
            self.top_k = max(pool.capacity(name) for name in pool.module_names())
        return MoreModel(
            base_model,
            pool,
            MoreConfig(
                top_k=self.top_k,
                output_scale=config.output_scale,
                router_init_std=config.router_init_std,
                importance_score=config.importance_score,
                k_min=min(config.k_min, self.top_k),
            ),
        )

    @property
    def state_module(self) -> nn.Module:
        return self.model.model  # names as in MoreModel.router_state_dict

    def server_logic(self, config: RunConfig) -> QuotaLogic:
        return QuotaLogic(self.model.capacities, config, self.top_k)

    def apply_round_config(self, round_config: Mapping[str, Any]) -> None:
        self.model.set_quotas(np.asarray(list(round_config["quotas"])))

    def start_local_training(self) -> None:
        self.model.read_importance(reset=True)
        self.model.track_importance(True)

    def finish_local_training(self) -> dict[str, Any]:
        self.model.track_importance(False)
        stats = self.model.read_importance(reset=True)
        return {"importance": [float(v) for v in stats.matrix]}

    def save_final(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_final(self, directory: Path) -> None:
        self.model.load_pretrained_state(directory)

    def describe_final(self) -> dict[str, Any]:
        return {"quotas": self.model.get_quotas().tolist()}

    @torch.no_grad()
    def routing_usage(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict:
        """Per matrix, the share of gate mass that goes to each pool module's experts.

        Gate mass, not selection counts: with K_ℓ = M_ℓ (dense) every expert is selected on every
        token, and counts would only restate the modules' ranks."""
        more = self.model
        more.eval()
        more.read_importance(reset=True)
        more.track_importance(True)
        try:
            for batch in batches:
                more(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            more.track_importance(False)
        stats = more.read_importance(reset=True)
        usage = {}
        for name, gates in zip(more.matrix_names, stats.mean_gate, strict=True):
            per_module: dict[str, float] = {}
            for (module, _), gate in zip(more.expert_owners[name], gates, strict=True):
                per_module[module] = per_module.get(module, 0.0) + float(gate)
            total = sum(per_module.values())
            usage[name] = {k: (v / total if total > 0 else 0.0) for k, v in per_module.items()}
        return usage
