"""Fed-SB: LoRA-SB in federated form. Frozen A and B, clients train and send only an r x r R.

Singhal et al., 2025, "Fed-SB: A Silver Bullet for Extreme Communication Efficiency and
Performance in (Private) Federated LoRA Fine-Tuning", built on LoRA-SB (Ponkshe et al., 2024).
Each adapted matrix gets ``delta W = s * B R A`` with ``A`` (r x d_in) and ``B`` (d_out x r) frozen
and the same on every client, so averaging the clients' ``R`` averages their updates exactly, and
a round sends r^2 values per matrix whatever the matrix size.

Initialisation (LoRA-SB's "update approximation"), on the server before round 1: the gradient
of the answer-token loss with respect to every adapted base weight is summed over
``--init_examples`` training examples, which are held out of every client's partition (a seeded
draw; their indices are in ``summary.json``'s ``final_state``). Adam's first step is about
``-lr * sign(gradient)``; its truncated SVD ``U S V^T`` gives ``B = U_r``, ``A = V_r^T`` and
``R = S_r / s``, so the initial model is the base plus that step's best rank-r approximation.
``A`` and ``B`` reach the clients once: that broadcast is counted in round 1's ``bytes_down``
(``bytes_setup``), for every client, since every client eventually needs them.

The final model is a standard PEFT LoRA folder (``A' = R A``, exact), loadable with plain PEFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model, load_peft_weights
from peft.tuners.lora import LoraLayer
from torch import nn

from smartfed.engine.method import FederatedMethod
from smartfed.engine.settings import MethodSettings, setting
from smartfed.errors import ConfigError
from smartfed.methods.fresh_lora import lora_targets
from smartfed.methods.registry import register_method
from smartfed.pool import LoraPool

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig

ADAPTER = "default"
MIX = "mix"  # the trainable r x r module inside each LoRA layer


@dataclass
class FedSBSettings(MethodSettings):
    """Fed-SB's rank, targets, learning rate and how many examples its initialisation reads."""

    learning_rate: float = setting(5e-4, "AdamW learning rate of R", above=0)
    lora_rank: int | None = setting(
        None, "rank r of A, B and the trained r x r matrix R (default: the pool's)", minimum=1
    )
    lora_targets: str | None = setting(None, "comma-separated target modules (default: the pool's)")
    init_examples: int = setting(
        50, "training examples the server's gradient-based init reads (held out of clients)",
        minimum=1,
    )  # fmt: skip


class ProjectThenMix(nn.Module):
    """``x -> R (A x)``: stands in PEFT's ``lora_A`` slot, so PEFT's forward computes
    ``B R A x * s``. ``weight`` is A's, which PEFT reads for the input dtype."""

    def __init__(self, project: nn.Linear, rank: int) -> None:
        super().__init__()
        self.project = project
        self.mix = nn.Linear(rank, rank, bias=False, dtype=project.weight.dtype)
        nn.init.eye_(self.mix.weight)

    @property
    def weight(self) -> torch.Tensor:
        return self.project.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.project(x))


def _train_only_mix(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad = f".{MIX}." in name


def _lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def sign_update_factors(
    gradient: torch.Tensor, rank: int, learning_rate: float, scaling: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R, A) with ``scaling * B R A`` the best rank-``rank`` approximation of Adam's first
    step ``-learning_rate * sign(gradient)`` (a pure function of the gradient)."""
    step = -learning_rate * torch.sign(gradient.float())
    u, s, vh = torch.linalg.svd(step, full_matrices=False)
    return u[:, :rank], torch.diag(s[:rank]) / scaling, vh[:rank]


@register_method
class FedSB(FederatedMethod):
    name = "fed_sb"
    summary = "frozen A and B from a gradient-sign SVD, only the r x r matrix R trained and sent"
    reuses_pool = False
    settings_class = FedSBSettings
    # Its init holds out --init_examples (50) training examples: more than a smoke bench's
    # tiny tasks have. Reference benches name it with the ranks they compare (26, 31).
    in_default_bench = False

    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        settings: FedSBSettings = config.settings
        base_model.requires_grad_(False)
        targets = lora_targets(pool, settings.lora_targets)
        rank = settings.lora_rank or max(pool.adapters[0].ranks)
        self.rank = rank
        lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0,
                          bias="none", task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(base_model, lora)
        for layer in _lora_layers(model).values():
            project = layer.lora_A[ADAPTER]
            if rank > min(project.in_features, layer.lora_B[ADAPTER].out_features):
                raise ConfigError(
                    f"--lora_rank {rank} exceeds a target matrix's size "
                    f"({layer.lora_B[ADAPTER].out_features} x {project.in_features})"
                )
            layer.lora_A[ADAPTER] = ProjectThenMix(project, rank)
        _train_only_mix(model)
        self.init_indices: list[int] = []
        return model

    # ------------------------------------------------------------------ server-side init
    @property
    def server_init_examples(self) -> int:
        return self.settings.init_examples

    def initialize_on_server(self, batches: list[dict[str, torch.Tensor]], indices: list[int]):
        """Set A, B and R from the summed gradient of the loss on ``batches`` (module docs)."""
        layers = _lora_layers(self.model)
        weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
        for weight in weights.values():
            weight.requires_grad_(True)
        try:
            with self.model.disable_adapter():
                self.model.train()
                for batch in batches:
                    self.model(**batch).loss.backward()
        finally:
            self.model.eval()
            _train_only_mix(self.model)  # PEFT re-enables the adapter's gradients on exit
        rate = self.settings.learning_rate
        with torch.no_grad():
            for name, layer in layers.items():
                weight = weights[name]
                gradient, weight.grad = weight.grad, None
                weight.requires_grad_(False)
                b, r, a = sign_update_factors(gradient, self.rank, rate, layer.scaling[ADAPTER])
                slot: ProjectThenMix = layer.lora_A[ADAPTER]
                slot.project.weight.copy_(a)
                slot.mix.weight.copy_(r)
                layer.lora_B[ADAPTER].weight.copy_(b)
        self.init_indices = list(indices)

    def setup_bytes(self) -> int:
        """A and B of every matrix in float32, sent once to each client."""
        frozen = sum(
            layer.lora_A[ADAPTER].project.weight.numel() + layer.lora_B[ADAPTER].weight.numel()
            for layer in _lora_layers(self.model).values()
        )
        return 4 * frozen * self.config.num_clients

    # ------------------------------------------------------------------ final model
    def _plain_state(self) -> dict[str, torch.Tensor]:
        """PEFT's own LoRA keys, with A' = R A (exact)."""
        state = {}
        for name, layer in _lora_layers(self.model).items():
            slot: ProjectThenMix = layer.lora_A[ADAPTER]
            prefix = name.removeprefix("base_model.model.")
            state[f"base_model.model.{prefix}.lora_A.weight"] = (
                (slot.mix.weight @ slot.project.weight).detach().float().cpu().contiguous()
            )
            state[f"base_model.model.{prefix}.lora_B.weight"] = (
                layer.lora_B[ADAPTER].weight.detach().float().cpu().contiguous()
            )
        return state

    def plain_lora(self) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
        return self.model.peft_config[ADAPTER], self._plain_state()

    def save_final(self, directory: Path) -> None:
        from safetensors.torch import save_file

        config, tensors = self.plain_lora()
        config.save_pretrained(str(directory))
        save_file(tensors, str(directory / "adapter_model.safetensors"))

    def load_final(self, directory: Path) -> None:
        try:
            weights = load_peft_weights(str(directory))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{directory}: cannot read the saved PEFT adapter: {exc}") from None
        layers = _lora_layers(self.model)
        with torch.no_grad():
            for name, layer in layers.items():
                prefix = "base_model.model." + name.removeprefix("base_model.model.")
                try:
                    a, b = weights[f"{prefix}.lora_A.weight"], weights[f"{prefix}.lora_B.weight"]
                except KeyError:
                    raise ConfigError(f"{directory}: no LoRA weights for {name}") from None
                slot: ProjectThenMix = layer.lora_A[ADAPTER]
                slot.project.weight.copy_(a)
                nn.init.eye_(slot.mix.weight)
                layer.lora_B[ADAPTER].weight.copy_(b)

    def describe_final(self) -> dict[str, Any]:
        return {"init_examples": self.init_indices}
