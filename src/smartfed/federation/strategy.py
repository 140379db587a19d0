"""SmartFed's Flower strategy: FedAvg over the method's global state, plus its server logic.

On top of FedAvg it
- samples ``sample_clients`` nodes per round from a seeded RNG (so a resumed run samples the
  same clients an uninterrupted one would), drawing from the nodes in the order of their
  partitions: before the first round it asks each node its ``partition-id`` (a Flower query
  message, not counted in the bytes), since Flower's simulation and SuperLink give nodes
  random ids, so every engine samples the same partitions with the same seed;
- aggregates the replies in partition order too, so that floating-point sums do not depend on
  the order in which replies arrive;
- sends the method's round config with the global state (SmartFed: the quota table);
- drops clients that failed or returned non-finite values, with the reason logged, and fails the
  round with a clear message when fewer than ``min_replies`` usable replies remain;
- combines the usable replies with the run's ``--aggregation`` (FedAvg, or Flower's FedMedian,
  FedTrimmedAvg or Krum), after clipping each update with ``--clip_update_norm``
  (:mod:`.robust`);
- under central DP (``--dp_noise_multiplier``), replaces that mean by the clipped, noised one
  of :mod:`smartfed.engine.privacy` and samples clients from the run's secret DP key
  (:mod:`.privacy`);
- hands the usable replies' metrics to the method's :class:`ServerLogic` (SmartFed: importance
  aggregation and EEQA for the next round);
- where the method evaluates on clients (FedSA-LoRA's personalised models), runs Flower's
  evaluate round on the clients that trained, with the new global state, and keeps the
  token-weighted loss;
- sends the global state in the run's wire dtype (``wire_dtype``), decodes replies to float32
  before anything reads them, and averages and keeps the global state in float32
  (:mod:`.wire`);
- counts the bytes of every record it sends and receives, as sent (in the wire dtype);
- hands each finished round's :class:`RoundReport` and new global state to ``on_round_end``
  (the ServerApp evaluates and records it), where Flower's central evaluation would run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from smartfed.engine.evaluation import loss_metrics
from smartfed.engine.method import ServerLogic
from smartfed.engine.privacy import CentralPrivacy
from smartfed.engine.recorder import RoundReport
from smartfed.engine.training import is_finite_update
from smartfed.errors import SmartFedError
from smartfed.federation.privacy import private_aggregate
from smartfed.federation.robust import clip_replies, payload_aggregator
from smartfed.federation.settings import PARTITION_ID
from smartfed.federation.wire import as_float32, recast
from smartfed.robust import AggregationRule

log = logging.getLogger(__name__)


class RoundFailed(SmartFedError):
    """Too few usable client replies to aggregate a round."""


def record_bytes(content: RecordDict) -> int:
    """Payload size of a message: the sum of its records' own byte counts (Flower's measure)."""
    return sum(record.count_bytes() for record in content.values())


#: Called once per finished round with its report and the new global state.
RoundEndCallback = Callable[[RoundReport, dict[str, torch.Tensor]], None]


class SmartFedStrategy(FedAvg):
    def __init__(
        self,
        *,
        num_clients: int,
        sample_clients: int,
        min_replies: int,
        server_logic: ServerLogic,
        seed: int,
        on_round_end: RoundEndCallback,
        round_offset: int = 0,
        node_wait_s: float = 600.0,
        client_eval_rounds: Callable[[int], bool] | None = None,
        wire_dtype: str = "float32",
        aggregation: AggregationRule | None = None,
        privacy: CentralPrivacy | None = None,
    ):
        flower_log = logging.getLogger("flwr")
        level = flower_log.level
        # FedAvg warns that fraction_evaluate = 0 skips federated evaluation: that is the intent
        # (evaluation is centralised, on the server's held-out split), so the warning is noise.
        flower_log.setLevel(logging.ERROR)
        try:
            super().__init__(
                fraction_train=sample_clients / num_clients,
                fraction_evaluate=0.0,
                min_train_nodes=sample_clients,
                min_available_nodes=num_clients,
            )
        finally:
            flower_log.setLevel(level)
        self.num_clients = num_clients
        self.sample_clients = sample_clients
        self.min_replies = min_replies
        self.server_logic = server_logic
        self.seed = seed
        self.round_offset = round_offset
        self.node_wait_s = node_wait_s
        # Rounds (absolute) in which clients evaluate their own models; None: never.
        self.client_eval_rounds = client_eval_rounds
        self.on_round_end = on_round_end
        self.wire_dtype = wire_dtype
        self.aggregation = aggregation or AggregationRule()
        self._payload_aggregator = payload_aggregator(self.aggregation)
        self._round_global: ArrayRecord | None = None  # the state this round sent (float32)
        self.privacy = privacy  # central DP, or None
        self._report: RoundReport | None = None  # the round in progress
        # Node ids in partition order, for the node ids they were asked for.
        self._asked: list[int] = []
        self._ordered: list[int] = []
        self._rounds_started = False  # whether this server has sent a round yet
        self._sent: list[Message] = []  # the round's training messages (ids set once pushed)

    def run(
        self, grid: Grid, global_state: dict[str, torch.Tensor], num_rounds: int
    ) -> dict[str, torch.Tensor]:
        """Run ``num_rounds`` rounds from ``global_state``; return the final global state."""
        result = self.start(
            grid=grid,
            initial_arrays=ArrayRecord(global_state),
            num_rounds=num_rounds,
            train_config=ConfigRecord({}),
            evaluate_fn=self._round_ended,
        )
        return result.arrays.to_torch_state_dict() if result.arrays else global_state

    def absolute_round(self, server_round: int) -> int:
        """Flower counts rounds from 1 in every ``start``; a resumed run continues the count."""
        return server_round + self.round_offset

    # ------------------------------------------------------------------ sampling
    def nodes_wanted(self) -> int:
        """Nodes to wait for before a round: all ``num_clients`` before the first round this
        server runs (every partition should be known), then only ``sample_clients``, so that
        a lost node does not hold every later round until the wait expires."""
        return self.num_clients if not self._rounds_started else self.sample_clients

    def nodes_needed(self) -> int:
        """Fewest nodes a round may run with once the wait has expired: ``min_replies``; under
        DP all ``sample_clients``, since the noise and the accountant assume that many."""
        return self.sample_clients if self.privacy is not None else self.min_replies

    def _wait_for_nodes(self, grid: Grid, absolute: int) -> list[int]:
        node_ids = sorted(grid.get_node_ids())
        wanted = self.nodes_wanted()
        if len(node_ids) >= wanted:
            return node_ids
        # Logged once per wait, so a deployment that seems to hang says what it waits for.
        log.warning(
            "round %d: %d of %d clients connected; waiting up to %.0f s for %d",
            absolute, len(node_ids), self.num_clients, self.node_wait_s, wanted,
        )  # fmt: skip
        deadline = time.monotonic() + self.node_wait_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= wanted:
                return node_ids
        needed = self.nodes_needed()
        if len(node_ids) >= needed:
            log.warning(
                "round %d: %d clients connected after %.0f s (wanted %d): the round runs with them",
                absolute, len(node_ids), self.node_wait_s, wanted,
            )  # fmt: skip
            return node_ids
        raise RoundFailed(
            f"round {absolute}: only {len(node_ids)} of {self.num_clients} clients connected "
            f"within {self.node_wait_s:.0f} s, need at least {needed}; the run stopped after its "
            "last complete round and continues with --resume once enough nodes are back"
        )

    def _in_partition_order(self, grid: Grid, node_ids: list[int]) -> list[int]:
        """``node_ids`` ordered by the ``partition-id`` each node reports; as given (sorted
        ids) when a node does not answer or two report the same partition."""
        if node_ids != self._asked:
            query = RecordDict({"config": ConfigRecord({"ask": PARTITION_ID})})
            messages = [
                Message(content=query, message_type=MessageType.QUERY, dst_node_id=node)
                for node in node_ids
            ]
            partitions: dict[int, int] = {}
            for reply in grid.send_and_receive(messages, timeout=self.node_wait_s):
                metrics = None if reply.has_error() else reply.content.get("metrics")
                if metrics is not None and PARTITION_ID in metrics:
                    partitions[reply.metadata.src_node_id] = int(metrics[PARTITION_ID])
            unique = len(set(partitions.values())) == len(partitions)
            if set(partitions) == set(node_ids) and unique:
                self._ordered = sorted(node_ids, key=partitions.__getitem__)
            else:
                log.info("nodes did not all report distinct partition ids: sampling by node id")
                self._ordered = list(node_ids)
            self._asked = list(node_ids)
        return self._ordered

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        absolute = self.absolute_round(server_round)
        node_ids = self._in_partition_order(grid, self._wait_for_nodes(grid, absolute))
        self._rounds_started = True
        # Under DP the sample must be secret, like the noise: drawn from the run's DP key.
        seed = self.privacy.sampling_seed(absolute) if self.privacy else [self.seed, absolute]
        rng = np.random.default_rng(seed)
        # Fewer nodes than sample_clients only after a wait expired: sample all of them.
        drawn = rng.choice(len(node_ids), min(self.sample_clients, len(node_ids)), replace=False)
        chosen = [node_ids[i] for i in sorted(int(d) for d in drawn)]
        extra = self.server_logic.round_config()
        config = ConfigRecord({**dict(config), **extra, "server-round": absolute})
        self._round_global = arrays
        arrays = recast(arrays, self.wire_dtype)
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        report = RoundReport(server_round=absolute, sampled=chosen, round_config=extra)
        report.bytes_down = record_bytes(content) * len(chosen)
        self._report = report
        self._sent = [
            Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            for node in chosen
        ]
        return self._sent

    # ------------------------------------------------------------------ aggregation
    def sender(self, reply: Message) -> int:
        """The node a reply is about. The SuperLink answers for a node that stopped sending
        heartbeats itself: the error reply's ``src_node_id`` is the SuperLink's own id, so
        the node is found from the message the reply answers."""
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        return asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        absolute = self.absolute_round(server_round)
        report = self._current(absolute)
        replies = list(replies)
        usable: list[Message] = []
        for reply in replies:
            node = self.sender(reply)
            if reply.has_error():
                report.dropped[node] = f"client error: {reply.error.reason}"
                continue
            report.bytes_up += record_bytes(reply.content)  # as sent: in the wire dtype
            reason = self._to_float32(reply) or self._unusable(reply)
            if reason:
                report.dropped[node] = reason
            else:
                usable.append(reply)
        missing = set(report.sampled) - {self.sender(r) for r in replies}
        for node in sorted(missing):
            report.dropped[node] = "no reply"
        for node, reason in sorted(report.dropped.items()):
            log.warning("round %d: dropped client %d: %s", absolute, node, reason)
        rank = {node: i for i, node in enumerate(self._ordered)}
        usable.sort(key=lambda reply: rank.get(self.sender(reply), len(rank)))
        if len(usable) < self.min_replies:
            raise RoundFailed(
                f"round {absolute}: {len(usable)} usable client replies of "
                f"{len(report.sampled)} sampled, need at least {self.min_replies} "
                f"(dropped: {'; '.join(f'{n}: {r}' for n, r in sorted(report.dropped.items()))})"
            )

        arrays, metrics = self._aggregate_payloads(server_round, usable)
        if self.privacy is not None:  # DP's clipped, noised mean replaces FedAvg's
            assert self._round_global is not None, "configure_train sets the round's state"
            arrays = private_aggregate(self.privacy, absolute, self._round_global, usable)
        metric_records = [reply.content["metrics"] for reply in usable]
        weights = np.array([m["num-examples"] for m in metric_records], dtype=np.float64)
        report.train_loss = float(
            np.average([m["train-loss"] for m in metric_records], weights=weights)
        )
        report.step_time_s = float(np.mean([m["step-time-s"] for m in metric_records]))
        self.server_logic.aggregate(metric_records, absolute)
        return arrays, metrics

    def _aggregate_payloads(
        self, server_round: int, usable: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``--clip_update_norm`` on every update, then ``--aggregation``'s Flower strategy."""
        absolute = self.absolute_round(server_round)
        rule = self.aggregation
        if len(usable) < rule.min_clients:
            raise RoundFailed(
                f"round {absolute}: {len(usable)} usable client replies, --aggregation "
                f"{rule.name} needs at least {rule.min_clients} ({rule.requirement})"
            )
        if rule.clip_update_norm is not None:
            assert self._round_global is not None, "configure_train sets the round's state"
            self._current(absolute).update_norms = clip_replies(
                usable, self._round_global, rule.clip_update_norm, absolute
            )
        return self._payload_aggregator.aggregate_train(server_round, usable)

    # ------------------------------------------------------------------ client-side evaluation
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Personalised methods only: the clients that trained this round evaluate the new global
        state combined with their own local state (FedSA-LoRA: averaged A + own B)."""
        absolute = self.absolute_round(server_round)
        if self.client_eval_rounds is None or not self.client_eval_rounds(absolute):
            return []
        report = self._current(absolute)
        nodes = [node for node in report.sampled if node not in report.dropped]
        config = ConfigRecord({**report.round_config, "server-round": absolute})
        arrays = recast(arrays, self.wire_dtype)
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        report.bytes_eval = record_bytes(content) * len(nodes)
        self._sent = [  # training is aggregated by now: replies are matched to these
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
            for node in nodes
        ]
        return self._sent

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        absolute = self.absolute_round(server_round)
        report = self._current(absolute)
        loss_sum, tokens = 0.0, 0
        for reply in replies:
            node = self.sender(reply)
            if reply.has_error():
                log.warning("round %d: client %d failed to evaluate: %s", absolute, node,
                            reply.error.reason)  # fmt: skip
                continue
            report.bytes_eval += record_bytes(reply.content)
            metrics = reply.content.get("metrics")
            if metrics is None or "eval-tokens" not in metrics or "eval-loss-sum" not in metrics:
                log.warning("round %d: client %d sent no evaluation", absolute, node)
                continue
            loss_sum += float(metrics["eval-loss-sum"])
            tokens += int(metrics["eval-tokens"])
        if not tokens:
            return None
        report.client_eval = loss_metrics(loss_sum, tokens)
        return MetricRecord({k: report.client_eval[k] for k in ("eval_loss", "eval_ppl")})

    # ------------------------------------------------------------------ end of round
    def _round_ended(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's central-evaluation hook: called before the first round (nothing to hand
        over: the ServerApp evaluates round 0 itself) and after each round, with its result."""
        if server_round == 0:
            return None
        report = self._current(self.absolute_round(server_round))
        self._report = None
        self.on_round_end(report, arrays.to_torch_state_dict())
        return None

    def _current(self, absolute: int) -> RoundReport:
        report = self._report
        assert report is not None and report.server_round == absolute, (absolute, report)
        return report

    @staticmethod
    def _to_float32(reply: Message) -> str | None:
        """Decode the reply's arrays to float32 in place (FedAvg then averages in float32);
        the reason if they cannot be read."""
        if "arrays" in reply.content:
            try:
                reply.content["arrays"] = as_float32(reply.content["arrays"])
            except (ValueError, TypeError, KeyError) as exc:
                return f"cannot read the reply's arrays: {exc}"
        return None

    def _unusable(self, reply: Message) -> str | None:
        content = reply.content
        if "arrays" not in content or "metrics" not in content:
            return "reply lacks arrays or metrics"
        metrics = content["metrics"]
        for key in ("num-examples", "train-loss", "tokens", "step-time-s"):
            if key not in metrics:
                return f"reply metrics lack '{key}'"
        state = content["arrays"].to_torch_state_dict()
        reason = is_finite_update(state, float(metrics["train-loss"]))
        if reason:
            return reason
        return self.server_logic.check_reply(metrics)
