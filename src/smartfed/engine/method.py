"""What a federated fine-tuning method is, as far as the Flower apps are concerned.

A method wraps the frozen base model (and, for knowledge-reuse methods, the LoRA pool) into a
trainable ``nn.Module`` and answers the questions every round asks:

- which parameters a client trains (those with ``requires_grad``);
- which of them travel to and from the server and are averaged (:meth:`global_state`), and
  which stay on the client between rounds (:meth:`local_state`, e.g. FedSA-LoRA's B);
- what the server adds to FedAvg (:class:`ServerLogic`, e.g. SmartFed's quotas and EEQA);
- how the final model is saved and reloaded.

Parameter names are those of :attr:`FederatedMethod.state_module`, so checkpoints, messages and
final folders agree. Everything random at construction (router init, a fresh LoRA's A) comes
from the run seed, which the runtime sets before building: every process builds the same
initial model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from smartfed.engine.settings import MethodSettings
from smartfed.errors import ConfigError
from smartfed.pool import LoraPool

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig


@dataclass(frozen=True)
class Ablation:
    """A named variant of a method for `smartfed bench`: the settings it changes."""

    label: str
    overrides: dict[str, Any]
    description: str


class ServerLogic:
    """Server-side work a method adds to plain FedAvg; this default adds none.

    The strategy calls these around every round; all of it must be JSON-serialisable through
    :meth:`state_dict` so a resumed run continues exactly.
    """

    def round_config(self) -> dict[str, Any]:
        """Extra entries of the ConfigRecord sent to clients with the global state."""
        return {}

    def check_reply(self, metrics: Mapping[str, Any]) -> str | None:
        """None if a reply's metrics carry what :meth:`aggregate` needs, else the reason not."""
        return None

    def aggregate(self, metrics: list[Mapping[str, Any]], completed_round: int) -> None:
        """Digest the usable replies' metrics after round ``completed_round``."""

    def round_fields(self, used_config: Mapping[str, Any]) -> dict[str, Any]:
        """Fields for the round's metrics.jsonl row, given the round config the round used."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume)."""


class FederatedMethod(ABC):
    """One federated fine-tuning method. Subclasses register with ``@register_method``."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and reports
    reuses_pool: ClassVar[bool]  # knowledge reuse (pool modules) vs knowledge-free (fresh LoRA)
    trains: ClassVar[bool] = True  # False: no rounds, no communication (static merging)
    evaluates_on_clients: ClassVar[bool] = False  # personalised methods: clients report eval loss
    has_global_model: ClassVar[bool] = True  # False: no single model exists on the server
    # The method's own settings (flags, TOML keys, Flower keys are generated from its fields).
    settings_class: ClassVar[type[MethodSettings]] = MethodSettings
    # `smartfed bench`: whether the method runs in a default bench, and its named ablations
    # (label -> (settings it changes, description)).
    in_default_bench: ClassVar[bool] = True
    ablations: ClassVar[tuple[Ablation, ...]] = ()

    def __init__(self, base_model: nn.Module, pool: LoraPool, config: RunConfig):
        self.config = config
        self.settings = config.settings
        self.pool = pool
        self.model = self.build(base_model, pool, config)
        self.model.eval()

    # ------------------------------------------------------------------ construction
    @abstractmethod
    def build(self, base_model: nn.Module, pool: LoraPool, config: RunConfig) -> nn.Module:
        """Wrap ``base_model``; the returned module's forward takes a batch and returns .loss."""

    @property
    def state_module(self) -> nn.Module:
        """The module whose parameter names key every exchanged or saved tensor."""
        return self.model

    # ------------------------------------------------------------------ server-side init
    @property
    def server_init_examples(self) -> int:
        """Training examples the server reads before round 1 to initialise the method (held out
        of every client's partition); 0: none (the default)."""
        return 0

    def initialize_on_server(
        self, batches: list[dict[str, torch.Tensor]], indices: list[int]
    ) -> None:
        """Initialise from ``batches`` (the held-out examples, ``indices`` into the training
        split) before round 1; only called when :attr:`server_init_examples` > 0."""
        raise NotImplementedError(f"{self.name} has no server-side initialisation")

    def setup_bytes(self) -> int:
        """Bytes sent once before round 1 besides the global state (tensors every client
        needs but nobody trains); counted in round 1's traffic."""
        return 0

    # ------------------------------------------------------------------ state
    def is_communicated(self, name: str) -> bool:
        """Whether trainable parameter ``name`` is averaged on the server (default: all are)."""
        return True

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.state_module.named_parameters() if p.requires_grad}

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def global_state(self) -> dict[str, torch.Tensor]:
        """The tensors the server averages and sends each round: CPU float32 copies, whatever
        the model's device (the federation layer serialises them)."""
        return {
            n: _exchanged(p)
            for n, p in self.trainable_parameters().items()
            if self.is_communicated(n)
        }

    def local_state(self) -> dict[str, torch.Tensor]:
        """Trained tensors that never leave the client (CPU float32 copies); empty for most
        methods."""
        return {
            n: _exchanged(p)
            for n, p in self.trainable_parameters().items()
            if not self.is_communicated(n)
        }

    def load_global_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._load(state, self.global_state().keys(), "global")

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._load(state, self.local_state().keys(), "client-local")

    def _load(self, state: Mapping[str, torch.Tensor], expected: Iterable[str], what: str) -> None:
        expected = set(expected)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ConfigError(
                f"{self.name}: {what} state does not match this model: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]} (saved by another method, pool or config?)"
            )
        params = self.trainable_parameters()
        with torch.no_grad():
            for name in expected:
                value, param = state[name], params[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise ConfigError(
                        f"{self.name}: '{name}' has shape {tuple(value.shape)}, this model "
                        f"expects {tuple(param.shape)}"
                    )
                param.copy_(value.to(param.device, param.dtype))

    # ------------------------------------------------------------------ rounds
    def server_logic(self, config: RunConfig) -> ServerLogic:
        """The server's part of this run. ``config`` is the run's own: ``self.config`` is the
        one the (cached, shared) model was built under, which may differ in server settings
        such as EEQA on/off."""
        return ServerLogic()

    def apply_round_config(self, round_config: Mapping[str, Any]) -> None:
        """Client (and server evaluation) side of :meth:`ServerLogic.round_config`."""
        return None

    def start_local_training(self) -> None:
        """Called before a client's local steps (e.g. reset statistics)."""
        return None

    def finish_local_training(self) -> dict[str, Any]:
        """Called after the local steps; returns extra metrics sent with the update."""
        return {}

    def reply_metric_sizes(self) -> dict[str, int]:
        """The sizes of what :meth:`finish_local_training` returns, known without training:
        metric name -> number of values (1 for a scalar). ``smartfed run --dry_run`` counts a
        reply's bytes from it."""
        return {}

    # ------------------------------------------------------------------ final model
    @abstractmethod
    def save_final(self, directory: Path) -> None:
        """Write the trained model's own files into the (empty) folder ``directory``."""

    @abstractmethod
    def load_final(self, directory: Path) -> None:
        """Load what :meth:`save_final` wrote into this freshly built method."""

    def plain_lora(self) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """The final model as one standard PEFT LoRA, exactly: ``(peft.LoraConfig, tensors keyed
        as PEFT saves them)``; None where the update depends on the input (routing) or the
        model is already a plain PEFT model that saves itself."""
        return None

    def routing_usage(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict | None:
        """Per matrix, the share of routing that goes to each pool module (routing methods)."""
        return None

    def describe_final(self) -> dict[str, Any]:
        """A JSON summary of the trained state for summary.json (e.g. LoRAHub's weights)."""
        return {}


def _exchanged(param: torch.Tensor) -> torch.Tensor:
    """A CPU float32 copy of ``param`` (for a CPU float32 parameter: exactly ``clone()``)."""
    return param.detach().to(device="cpu", dtype=torch.float32, copy=True)
