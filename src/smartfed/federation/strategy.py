"""SmartFed's Flower strategy: FedAvg over routers, plus importance aggregation and EEQA.

On top of FedAvg it
- samples ``sample_clients`` nodes per round from a seeded RNG (so a resumed run samples the
  same clients an uninterrupted one would);
- sends the per-matrix quota table with the routers each round;
- drops clients that failed or returned non-finite values, with the reason logged, and fails the
  round with a clear message when fewer than ``min_replies`` usable replies remain;
- aggregates importance (token-weighted mean, then EMA) and runs EEQA for the next round;
- counts the bytes of every record it sends and receives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from smartfed.errors import SmartFedError
from smartfed.federation.core import is_finite_update, next_quotas, update_importance

log = logging.getLogger(__name__)


class RoundFailed(SmartFedError):
    """Too few usable client replies to aggregate a round."""


def record_bytes(content: RecordDict) -> int:
    """Payload size of a message: the sum of its records' own byte counts (Flower's measure)."""
    return sum(record.count_bytes() for record in content.values())


@dataclass
class RoundReport:
    """What the server learned in one round; read by the ServerApp to log and checkpoint."""

    server_round: int
    sampled: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float | None = None
    step_time_s: float | None = None
    client_importance: list[list[float]] = field(default_factory=list)
    started: float = field(default_factory=time.time)


class SmartFedStrategy(FedAvg):
    def __init__(
        self,
        *,
        num_clients: int,
        sample_clients: int,
        min_replies: int,
        capacities: np.ndarray,
        top_k: int,
        k_min: int,
        enable_eeqa: bool,
        eeqa_warmup_rounds: int,
        ema_beta: float,
        seed: int,
        round_offset: int = 0,
        quotas: np.ndarray | None = None,
        ema_importance: np.ndarray | None = None,
        node_wait_s: float = 600.0,
    ):
        super().__init__(
            fraction_train=sample_clients / num_clients,
            fraction_evaluate=0.0,  # evaluation is centralised, on the server's held-out split
            min_train_nodes=sample_clients,
            min_available_nodes=num_clients,
        )
        self.num_clients = num_clients
        self.sample_clients = sample_clients
        self.min_replies = min_replies
        self.capacities = np.asarray(capacities)
        self.top_k, self.k_min = top_k, k_min
        self.enable_eeqa, self.eeqa_warmup_rounds = enable_eeqa, eeqa_warmup_rounds
        self.ema_beta, self.seed = ema_beta, seed
        self.round_offset = round_offset
        self.node_wait_s = node_wait_s
        self.quotas = (
            np.asarray(quotas)
            if quotas is not None
            else next_quotas(
                importance=None, capacities=self.capacities, top_k=top_k, k_min=k_min,
                completed_round=0, warmup_rounds=eeqa_warmup_rounds, enable_eeqa=enable_eeqa,
            )
        )  # fmt: skip
        self.ema_importance = ema_importance
        self.reports: dict[int, RoundReport] = {}

    def absolute_round(self, server_round: int) -> int:
        """Flower counts rounds from 1 in every ``start``; a resumed run continues the count."""
        return server_round + self.round_offset

    # ------------------------------------------------------------------ sampling
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.time() + self.node_wait_s
        while True:
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= self.num_clients:
                return node_ids
            if time.time() > deadline:
                raise RoundFailed(
                    f"only {len(node_ids)} of {self.num_clients} clients connected within "
                    f"{self.node_wait_s:.0f} s"
                )
            time.sleep(1.0)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = self.absolute_round(server_round)
        node_ids = self._wait_for_nodes(grid)
        rng = np.random.default_rng([self.seed, absolute])
        chosen = sorted(int(n) for n in rng.choice(node_ids, self.sample_clients, replace=False))
        config = ConfigRecord(
            {**dict(config), "server-round": absolute, "quotas": [int(q) for q in self.quotas]}
        )
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        report = RoundReport(server_round=absolute, sampled=chosen)
        report.bytes_down = record_bytes(content) * len(chosen)
        self.reports[absolute] = report
        return [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            for node in chosen
        ]

    # ------------------------------------------------------------------ aggregation
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        absolute = self.absolute_round(server_round)
        report = self.reports[absolute]
        replies = list(replies)
        usable: list[Message] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                report.dropped[node] = f"client error: {reply.error.reason}"
                continue
            report.bytes_up += record_bytes(reply.content)
            reason = self._unusable(reply)
            if reason:
                report.dropped[node] = reason
            else:
                usable.append(reply)
        missing = set(report.sampled) - {r.metadata.src_node_id for r in replies}
        for node in sorted(missing):
            report.dropped[node] = "no reply"
        for node, reason in sorted(report.dropped.items()):
            log.warning("round %d: dropped client %d: %s", absolute, node, reason)
        if len(usable) < self.min_replies:
            raise RoundFailed(
                f"round {absolute}: {len(usable)} usable client replies of "
                f"{len(report.sampled)} sampled, need at least {self.min_replies} "
                f"(dropped: {'; '.join(f'{n}: {r}' for n, r in sorted(report.dropped.items()))})"
            )

        arrays, metrics = super().aggregate_train(server_round, usable)
        metric_records = [reply.content["metrics"] for reply in usable]
        weights = np.array([m["num-examples"] for m in metric_records], dtype=np.float64)
        report.train_loss = float(
            np.average([m["train-loss"] for m in metric_records], weights=weights)
        )
        report.step_time_s = float(np.mean([m["step-time-s"] for m in metric_records]))
        importance = [np.asarray(m["importance"], dtype=np.float64) for m in metric_records]
        report.client_importance = [imp.tolist() for imp in importance]
        self.ema_importance = update_importance(
            self.ema_importance, importance, [int(m["tokens"]) for m in metric_records],
            self.ema_beta,
        )  # fmt: skip
        self.quotas = next_quotas(
            importance=self.ema_importance,
            capacities=self.capacities,
            top_k=self.top_k,
            k_min=self.k_min,
            completed_round=absolute,
            warmup_rounds=self.eeqa_warmup_rounds,
            enable_eeqa=self.enable_eeqa,
        )
        return arrays, metrics

    def _unusable(self, reply: Message) -> str | None:
        content = reply.content
        if "arrays" not in content or "metrics" not in content:
            return "reply lacks arrays or metrics"
        metrics = content["metrics"]
        for key in ("num-examples", "train-loss", "tokens", "importance", "step-time-s"):
            if key not in metrics:
                return f"reply metrics lack '{key}'"
        state = content["arrays"].to_torch_state_dict()
        reason = is_finite_update(state, float(metrics["train-loss"]))
        if reason:
            return reason
        importance = np.asarray(metrics["importance"], dtype=np.float64)
        if importance.shape != self.capacities.shape or not np.isfinite(importance).all():
            return "importance vector has the wrong length or non-finite values"
        return None
