"""SmartFed: rank-wise experts from the pool (MoRE), federated routers, EEQA quotas.

Clients train the per-matrix routers under the quota table the server sends and report the
per-matrix importance they measured; the server averages routers (FedAvg), folds importance into
an EMA and re-allocates the expert budget with EEQA (docs/design.md §1.2-1.5). The defaults are
the best measured trade-off of benchmarks/results/routers/ (router ``diag_lowrank`` at 5e-2,
every expert on every token, no EEQA): at M = 64 experts per matrix, top-K saved no compute and
cost loss. Top-K routing is one flag away: ``--topk_experts K`` (EEQA on, the paper's method)
or ``--no-enable_eeqa`` (uniform K = 32); ``--output_scale k|one|learnable|k0``. EEQA's
schedule can be damped with ``--k_max`` (a quota ceiling) and ``--eeqa_max_move`` (the most a
quota moves per round).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from smartfed.eeqa.server import next_quotas, update_importance
from smartfed.engine.method import Ablation, FederatedMethod, ServerLogic
from smartfed.engine.settings import MethodSettings, setting
from smartfed.errors import ConfigError
from smartfed.importance.scores import IMPORTANCE_SCORES
from smartfed.methods.registry import register_method
from smartfed.models import model_autocast, model_device, to_device
from smartfed.pool import LoraPool
from smartfed.robust import AggregationRule
from smartfed.tuners.more import EXPERT_PATHS, OUTPUT_SCALES, MoreConfig, MoreModel
from smartfed.tuners.routing import get_router, router_rank_for

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig

DEFAULT_TOP_K = 32
# EEQA-only settings whose unset value (None) is itself the default: no limit.
EEQA_LIMITS = ("k_max", "eeqa_max_move")
# Settings that ask for top-K routing: giving any of them turns the default (dense) off.
TOP_K_SETTINGS = ("topk_experts", "enable_eeqa", "eeqa_warmup_rounds", "k_min", "ema_beta",
                  *EEQA_LIMITS)  # fmt: skip
# The dense ablation's settings: no K to set and no EEQA, so it unsets their settings.
DENSE = dict.fromkeys(TOP_K_SETTINGS)
DENSE["dense"] = True


@dataclass
class SmartFedSettings(MethodSettings):
    """SmartFed's settings. EEQA's own settings are None (unset) unless EEQA runs: with
    ``--dense`` or ``--no-enable_eeqa`` giving one is refused rather than ignored. ``dense``
    is None until checked: dense unless a top-K setting was given."""

    # Chosen on validation data (benchmarks/results/routers/README.md): 5e-2 won the three-point
    # grid 1e-2, 5e-2, 2e-1 for diag_lowrank on both tasks; the paper's 5e-4 barely moves it.
    learning_rate: float = setting(5e-2, "AdamW learning rate of the routers", above=0)
    topk_experts: int | None = setting(
        None, f"average expert budget K per matrix (default {DEFAULT_TOP_K}; a matrix with "
        "fewer experts M_ℓ starts with all M_ℓ; at most the largest M_ℓ; not with --dense)",
        minimum=1,
    )  # fmt: skip
    dense: bool | None = setting(
        None, "every expert on every token (K = M, no EEQA): the default unless --topk_experts, "
        "--enable_eeqa or an EEQA setting is given; --no-dense: top-K routing (K 32, EEQA)",
    )  # fmt: skip
    enable_eeqa: bool | None = setting(
        None, "EEQA quota re-allocation (default: on unless --dense; --no-enable_eeqa: uniform K)"
    )
    eeqa_warmup_rounds: int | None = setting(
        None, "rounds of uniform K before EEQA starts (EEQA only; default 1)", minimum=0
    )
    k_min: int | None = setting(
        None, "smallest quota EEQA may give a matrix (EEQA only; default 1)", minimum=1
    )
    ema_beta: float | None = setting(
        None, "EMA weight of past importance (EEQA only; default 0.7)", minimum=0, below=1
    )
    k_max: int | None = setting(
        None, "largest quota EEQA may give a matrix, >= K (EEQA only; default: M_ℓ, no cap)",
        minimum=1,
    )  # fmt: skip
    eeqa_max_move: int | None = setting(
        None, "most a matrix's quota may change from one round to the next (EEQA only; "
        "default: no limit)", minimum=1,
    )  # fmt: skip
    output_scale: str = setting("k", "MoRE output scale c: k (current K_ℓ) | one | learnable "
                                "| k0 (initial K_ℓ, fixed)", choices=OUTPUT_SCALES)  # fmt: skip
    importance_score: str = setting(
        "cosine", "importance scorer: cosine | cosine_share | relative_norm | taylor "
        "(loss gradient x gate; see smartfed.importance.scores)",
        choices=tuple(IMPORTANCE_SCORES),
    )  # fmt: skip
    router: str = setting("diag_lowrank", "router design (`smartfed methods` lists them; "
                          "the paper's is linear)")  # fmt: skip
    router_init_std: float = setting(0.02, "std of the routers' normal init", minimum=0)
    router_rank: int | None = setting(
        None, "rank of router designs that have one (lowrank, diag_lowrank; default 4)",
        minimum=1,
    )  # fmt: skip
    residual_rank: int = setting(
        0, "rank of a fresh LoRA trained alongside the routers (0: none; alpha = 2 x rank)",
        minimum=0, maximum=256,
    )  # fmt: skip
    expert_path: str = setting(
        "dense", "how the selected experts are summed: dense (all M, masked) or sparse (only "
        "the K selected columns of B); same result, cost measured by benchmarks/step_cost.py",
        choices=EXPERT_PATHS,
    )  # fmt: skip

    def check(self) -> None:
        if self.dense is None:
            self.dense = not any(getattr(self, name) is not None for name in TOP_K_SETTINGS)
        get_router(self.router)  # unknown designs fail here, listing the known ones
        # Refused for designs without a rank; their default (4) for designs with one.
        self.router_rank = router_rank_for(self.router, self.router_rank)
        if self.dense:
            for name in ("topk_experts", "enable_eeqa"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"--{name} does not apply with --dense (every expert is active on every "
                        "token, so there is no budget to set or re-allocate)"
                    )
        elif self.topk_experts is None:
            self.topk_experts = DEFAULT_TOP_K
        eeqa_on = self.enable_eeqa if self.enable_eeqa is not None else not self.dense
        if not self.dense:
            self.enable_eeqa = eeqa_on
        eeqa_defaults = {"eeqa_warmup_rounds": 1, "k_min": 1, "ema_beta": 0.7}
        eeqa_defaults.update(dict.fromkeys(EEQA_LIMITS))  # None: no limit
        for name, default in eeqa_defaults.items():
            if not eeqa_on and getattr(self, name) is not None:
                why = "--dense" if self.dense else "--no-enable_eeqa"
                raise ConfigError(f"--{name} only applies with EEQA, which {why} turns off")
            if eeqa_on and getattr(self, name) is None:
                setattr(self, name, default)
        if eeqa_on and self.k_min > self.topk_experts:
            raise ConfigError(
                f"--k_min ({self.k_min}) must not exceed --topk_experts ({self.topk_experts})"
            )
        if eeqa_on and self.k_max is not None and self.k_max < self.topk_experts:
            raise ConfigError(
                f"--k_max ({self.k_max}) must not be below --topk_experts ({self.topk_experts}): "
                "the average quota is K, so some quota must reach it"
            )

    @classmethod
    def inapplicable(cls, values: dict[str, Any]) -> set[str]:
        dense = values.get("dense")
        if dense is None:
            dense = not any(values.get(name) is not None for name in TOP_K_SETTINGS)
        eeqa = values.get("enable_eeqa")
        eeqa_on = (eeqa if eeqa is not None else True) and not dense
        dropped = {"topk_experts", "enable_eeqa"} if dense else set()
        try:
            router = values.get("router", cls.field_named("router").default)
            ranked = getattr(get_router(router), "default_rank", None)
        except ConfigError:  # an unknown design: check() reports it
            ranked = 1
        if ranked is None:
            dropped.add("router_rank")
        eeqa_only = {"eeqa_warmup_rounds", "k_min", "ema_beta", *EEQA_LIMITS}
        return dropped | (set() if eeqa_on else eeqa_only)

    def dp_refusal(self) -> str | None:
        # EEQA's quotas follow the clients' importance statistics, which DP does not noise:
        # the broadcast quota table would leak them. Refused rather than privatised.
        if not self.eeqa_active:
            return None
        return (
            "--dp_noise_multiplier privatises the averaged routers only, but EEQA steers each "
            "round's quotas by the clients' importance statistics, sent in the clear: add "
            "--no-enable_eeqa (uniform K) or --dense to run SmartFed under DP"
        )

    @property
    def eeqa_active(self) -> bool:
        return bool(self.enable_eeqa) and not self.dense


class QuotaLogic(ServerLogic):
    """The quota table each round, and EEQA over the clients' token-weighted importance."""

    def __init__(
        self,
        capacities: np.ndarray,
        settings: SmartFedSettings,
        top_k: int,
        rule: AggregationRule | None = None,
    ):
        self.capacities = np.asarray(capacities)
        self.settings = settings
        self.top_k = top_k
        self.rule = rule or AggregationRule()  # how the clients' importance is combined
        self.enable_eeqa = settings.eeqa_active
        if self.enable_eeqa and settings.k_min > int(self.capacities.min()):
            # Caught here, before any round, not by EEQA after round 1's compute is spent.
            raise ConfigError(
                f"--k_min ({settings.k_min}) exceeds the smallest number of experts of an "
                f"adapted matrix ({int(self.capacities.min())}): lower --k_min or use a larger "
                "pool"
            )
        self.ema_importance: np.ndarray | None = None
        self.client_importance: list[list[float]] = []
        self.quotas = self._next(completed_round=0)

    def _next(self, completed_round: int, previous: np.ndarray | None = None) -> np.ndarray:
        """``previous``: the table the completed round used (None before the first round)."""
        return next_quotas(
            importance=self.ema_importance,
            capacities=self.capacities,
            top_k=self.top_k,
            k_min=self.settings.k_min or 1,
            completed_round=completed_round,
            warmup_rounds=self.settings.eeqa_warmup_rounds or 0,
            enable_eeqa=self.enable_eeqa,
            previous=previous,
            k_max=self.settings.k_max,
            max_move=self.settings.eeqa_max_move,
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
            self.settings.ema_beta if self.settings.ema_beta is not None else 0.0,
            self.rule,
        )
        self.quotas = self._next(completed_round, self.quotas)

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
    settings_class = SmartFedSettings
    ablations = (
        Ablation("smartfed_eeqa", {"enable_eeqa": True}, "SmartFed, top-K with EEQA"),
        Ablation("smartfed_uniform", {"enable_eeqa": False}, "SmartFed, uniform K"),
        # Dense needs no K and runs no EEQA: the entry unsets what it makes meaningless.
        Ablation("smartfed_dense", DENSE, "SmartFed, all experts (K = M)"),
        Ablation("smartfed_scale1", {"output_scale": "one"}, "SmartFed, c = 1"),
    )

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        settings: SmartFedSettings = config.settings
        largest = max(pool.capacity(name) for name in pool.module_names())
        if settings.dense:
            self.top_k = largest
        else:
            self.top_k = settings.topk_experts
            # K above some matrices' M_ℓ is by design (they start at K_ℓ = min(K, M_ℓ) and EEQA
            # moves the rest of the budget); above every M_ℓ it can only be a mistake.
            if self.top_k > largest:
                raise ConfigError(
                    f"--topk_experts {self.top_k} exceeds the number of experts of every adapted "
                    f"matrix (the largest has M = {largest}, the sum of the pool's ranks there): "
                    f"choose K <= {largest}, or --dense to use every expert"
                )
        return MoreModel(
            base_model,
            pool,
            MoreConfig(
                top_k=self.top_k,
                output_scale=settings.output_scale,
                router_init_std=settings.router_init_std,
                importance_score=settings.importance_score,
                router=settings.router,
                router_rank=settings.router_rank,
                residual_rank=settings.residual_rank,
                expert_path=settings.expert_path,
            ),
        )

    @property
    def state_module(self) -> nn.Module:
        return self.model.model  # names as in MoreModel.router_state_dict

    def server_logic(self, config: RunConfig) -> QuotaLogic:
        return QuotaLogic(
            self.model.capacities, config.settings, self.top_k, config.aggregation_rule
        )

    def apply_round_config(self, round_config: Mapping[str, Any]) -> None:
        self.model.set_quotas(np.asarray(list(round_config["quotas"])))

    def start_local_training(self) -> None:
        self.model.read_importance(reset=True)
        self.model.track_importance(True)

    def finish_local_training(self) -> dict[str, Any]:
        self.model.track_importance(False)
        stats = self.model.read_importance(reset=True)
        return {"importance": [float(v) for v in stats.matrix]}

    def reply_metric_sizes(self) -> dict[str, int]:
        return {"importance": len(self.model.matrix_names)}

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
        device = model_device(more)
        try:
            for batch in batches:
                batch = to_device(batch, device)
                with model_autocast(more):
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
