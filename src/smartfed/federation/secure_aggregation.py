"""Secure aggregation of the clients' payloads with Flower's SecAgg+ (``--secure_aggregation``).

Flower 1.42 offers SecAgg+ only through its legacy API. The server side,
``flwr.server.workflow.SecAggPlusWorkflow``, runs on a ``LegacyContext`` that holds a legacy
``flwr.server.strategy.Strategy`` (``configure_fit`` / ``aggregate_fit``), and exchanges the legacy
FitIns / FitRes message layout; the client side is ``flwr.client.mod.secaggplus_mod``. Nothing in
1.42 runs SecAgg+ under a message-API strategy (``flwr.serverapp.strategy``, on which
:class:`~.strategy.SmartFedStrategy` is built). So this module is a separate, legacy path for the
training exchange only:

- :class:`SecureAggregationStrategy` runs each round's training through the workflow (setup,
  share keys, collect masked vectors, unmask). Its legacy strategy (:class:`_LegacyFit`) gives the
  workflow SmartFedStrategy's sampling and round config, and takes back the unmasked weighted
  average. The rest of a round is SmartFedStrategy's: evaluation on clients, the round report,
  the method's server logic, the end-of-round hook, resume.
- :func:`secure_aggregation_mod` wraps the ClientApp's train. Messages of the protocol go through
  ``secaggplus_mod``, which calls the ordinary train on the collect stage (translated from and to
  the legacy layout here); other train messages pass through, so one ClientApp serves both paths.

What the server learns: the weighted average of the sampled clients' payloads (weights: their
example counts, as in FedAvg) and, in the clear, each reply's metrics (train loss, tokens, step
time and the method's own, such as SmartFed's per-expert importance that steers EEQA). It cannot
take one client's payload out of the sum, so the per-update checks of the plain path (finite
values) run on the client, together with the range check that SecAgg+ needs (Flower would clip
silently), and a reply whose metrics the server logic rejects fails the round.

Precision: each client scales its payload by its weight, quantises it stochastically to
``quantization_range`` levels over ``[-clipping_range, clipping_range]`` and masks it; the server
unmasks the integer sum and divides by the (quantised) total weight. :func:`aggregation_tolerance`
bounds the difference from exact FedAvg. The weights are the example counts divided by
``max_weight``, the largest partition (known to the server), so the largest client uses the full
quantisation range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager
from flwr.server.strategy import Strategy
from flwr.serverapp import Grid

from smartfed.engine.config import RunConfig
from smartfed.engine.training import is_finite_update
from smartfed.federation import flower_compat
from smartfed.federation.strategy import RoundFailed, SmartFedStrategy

if TYPE_CHECKING:
    from smartfed.federation.flower_compat import ClientProxy, Run

#: The next handler of a ClientApp mod (Flower's ``ClientAppCallable``).
NextHandler = Callable[[Message, Context], Message]

log = logging.getLogger(__name__)

# Keys SmartFed adds to the legacy FitIns config: the arrays' names (the legacy layout numbers
# them) and the range every value must lie in.
ARRAY_NAMES_KEY = "smartfed-array-names"
CLIPPING_RANGE_KEY = "smartfed-secagg-clipping-range"
REPLY_METRICS = ("num-examples", "train-loss", "tokens", "step-time-s")
# How long each of the protocol's four exchanges waits for replies (Flower's message-API default).
STAGE_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class SecAggPlusParameters:
    """The protocol's settings for one run (``RunConfig.secagg_*``, with ``max_weight``)."""

    num_shares: float
    reconstruction_threshold: float
    clipping_range: float
    quantization_range: int
    max_weight: int  # at least every client's example count: the largest partition

    @classmethod
    def from_config(cls, config: RunConfig, partition_sizes: Iterable[int]) -> SecAggPlusParameters:
        assert config.secure_aggregation and config.secagg_num_shares is not None
        return cls(
            num_shares=float(config.secagg_num_shares),
            reconstruction_threshold=float(config.secagg_reconstruction_threshold),
            clipping_range=float(config.secagg_clipping_range),
            quantization_range=int(config.secagg_quantization_range),
            max_weight=max([1, *partition_sizes]),
        )


def aggregation_tolerance(weights: Sequence[int], params: SecAggPlusParameters) -> float:
    """Largest difference, per value, between SecAgg+'s result and exact FedAvg (weights
    ``weights``) of the same payloads, each value of which lies in ±clipping_range (the
    clients check it).

    With T = quantization_range, c = clipping_range, n clients and quantised weights
    q_i = round(T·w_i / max_weight) / T, SecAgg+ returns Σ q_i·x_i / Σ q_i plus a rounding term:
    - values: each client's stochastic rounding is off by less than one step of 2c/T, and its
      float32 arithmetic (Flower quantises in the payload's dtype) by at most 3·T·2^-24 steps
      more; the n errors add up and are divided by Σ q_i;
    - weights: each q_i is within 1/(2T) of w_i / max_weight, which moves a weighted average of
      values in ±c by at most 2c·n/(2T) / Σ q_i;
    - float32: both averages end in float32, 4·n ulps of c between them at most.
    """
    steps, clip, count = params.quantization_range, params.clipping_range, len(weights)
    total = sum(round(steps * w / params.max_weight) / steps for w in weights)
    if total <= 0:
        raise ValueError("every weight quantises to zero: raise the quantization range")
    values = (2 * clip / steps) * (1.0 + 3.0 * steps * 2.0**-24) * count / total
    weighting = clip * count / (steps * total)
    return values + weighting + 4 * count * clip * 2.0**-24


# ---------------------------------------------------------------------------- server
class SecureAggregationStrategy(SmartFedStrategy):
    """SmartFedStrategy whose training exchange is Flower's SecAgg+ workflow."""

    def __init__(self, *, secagg: SecAggPlusParameters, **kwargs):
        super().__init__(**kwargs)
        from flwr.server.workflow import SecAggPlusWorkflow

        self.secagg = secagg
        self.workflow = SecAggPlusWorkflow(
            num_shares=secagg.num_shares,
            reconstruction_threshold=secagg.reconstruction_threshold,
            max_weight=float(secagg.max_weight),
            clipping_range=secagg.clipping_range,
            quantization_range=secagg.quantization_range,
            timeout=STAGE_TIMEOUT_S,
        )

    @classmethod
    def for_config(cls, config: RunConfig, partition_sizes: Iterable[int]) -> partial:
        """The class, bound to the run's protocol settings (the server knows the partitions)."""
        return partial(cls, secagg=SecAggPlusParameters.from_config(config, partition_sizes))

    def run(
        self, grid: Grid, global_state: dict[str, torch.Tensor], num_rounds: int
    ) -> dict[str, torch.Tensor]:
        """The rounds of Flower's ``Strategy.start``, with SecAgg+ for the training exchange."""
        arrays = ArrayRecord(global_state)
        for server_round in range(1, num_rounds + 1):
            arrays = self._train_securely(grid, server_round, arrays)
            evaluate = list(self.configure_evaluate(server_round, arrays, ConfigRecord({}), grid))
            if evaluate:
                replies = grid.send_and_receive(evaluate, timeout=STAGE_TIMEOUT_S)
                self.aggregate_evaluate(server_round, replies)
            self._round_ended(server_round, arrays)
        return arrays.to_torch_state_dict()

    def _train_securely(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        absolute = self.absolute_round(server_round)
        traffic = _CountingGrid(grid)
        fit = _LegacyFit(self, grid, arrays)
        self.workflow(traffic, flower_compat.legacy_round_context(
            grid.run.run_id, server_round, arrays, fit
        ))  # fmt: skip
        report = self._current(absolute)
        report.bytes_down, report.bytes_up = traffic.bytes_sent, traffic.bytes_received
        failed = {
            node: traffic.failed.get(node, "no reply")
            for node in report.sampled
            if node in traffic.failed or node not in traffic.repliers
        }
        for node, reason in sorted(failed.items()):
            log.warning("round %d: client %d failed: %s", absolute, node, reason)
        if fit.aggregate is None:
            reasons = "; ".join(f"{n}: {r}" for n, r in sorted(failed.items())) or "none"
            raise RoundFailed(
                f"round {absolute}: secure aggregation stopped before the sum was unmasked "
                f"(too few of the {len(report.sampled)} sampled clients left for the "
                f"reconstruction threshold; failed: {reasons})"
            )
        # Dropped: not in the sum (a client lost while unmasking still contributed).
        for node in report.sampled:
            if node not in fit.contributors:
                report.dropped[node] = failed.get(node, "no reply")
        dropped = "; ".join(f"{n}: {r}" for n, r in sorted(report.dropped.items())) or "none"
        if len(fit.contributors) < self.min_replies:
            raise RoundFailed(
                f"round {absolute}: {len(fit.contributors)} client updates in the secure sum "
                f"of {len(report.sampled)} sampled, need at least {self.min_replies} "
                f"(dropped: {dropped})"
            )
        rank = {node: i for i, node in enumerate(self._ordered)}
        contributors = sorted(fit.contributors, key=lambda node: rank.get(node, len(rank)))
        metrics = [traffic.metrics.get(node) for node in contributors]
        for node, record in zip(contributors, metrics, strict=True):
            reason = self._unusable_metrics(record)
            if reason:
                raise RoundFailed(
                    f"round {absolute}: client {node}'s reply is unusable ({reason}), and its "
                    "update is already inside the secure sum"
                )
        weights = np.array([m["num-examples"] for m in metrics], dtype=np.float64)
        report.train_loss = float(np.average([m["train-loss"] for m in metrics], weights=weights))
        report.step_time_s = float(np.mean([m["step-time-s"] for m in metrics]))
        self.server_logic.aggregate(metrics, absolute)
        return fit.aggregate

    def _unusable_metrics(self, metrics: MetricRecord | None) -> str | None:
        if metrics is None:
            return "reply lacks metrics"
        for key in REPLY_METRICS:
            if key not in metrics:
                return f"reply metrics lack '{key}'"
        return self.server_logic.check_reply(metrics)


class _LegacyFit(Strategy):
    """The legacy strategy the SecAgg+ workflow drives for one round: SmartFedStrategy's
    sampling and round config out, the unmasked average back (as named float32 arrays)."""

    def __init__(self, strategy: SecureAggregationStrategy, grid: Grid, arrays: ArrayRecord):
        self.strategy = strategy
        self.grid = grid
        self.arrays = arrays  # the global state the workflow was given, with its names
        self.names = list(arrays.keys())
        self.aggregate: ArrayRecord | None = None
        self.contributors: list[int] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        messages = self.strategy.configure_train(
            server_round, self.arrays, ConfigRecord({}), self.grid
        )
        instructions = []
        for message in messages:
            content = message.content
            state = content["arrays"]
            config = {
                **dict(content["config"]),
                ARRAY_NAMES_KEY: self.names,
                CLIPPING_RANGE_KEY: self.strategy.secagg.clipping_range,
            }
            payload = ndarrays_to_parameters([state[name].numpy() for name in self.names])
            node = flower_compat.node_proxy(message.metadata.dst_node_id, self.grid)
            instructions.append((node, FitIns(parameters=payload, config=config)))
        return instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.contributors = [proxy.node_id for proxy, _ in results]
        if results:  # the workflow gives every result the same, unmasked average
            average = parameters_to_ndarrays(results[0][1].parameters)
            self.aggregate = ArrayRecord(
                {
                    name: Array(np.asarray(value, dtype=np.float32))
                    for name, value in zip(self.names, average, strict=True)
                }
            )
        return None, {}  # the round's state is taken from here, not from the workflow

    # The workflow calls nothing else; the legacy interface has these too.
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _CountingGrid(Grid):
    """The run's Grid, counting the bytes of every message of the protocol and keeping the
    replies' metrics (SmartFed's, in the clear) and failures."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.bytes_sent = 0
        self.bytes_received = 0
        self.repliers: set[int] = set()
        self.failed: dict[int, str] = {}
        self.metrics: dict[int, MetricRecord] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self.bytes_sent += sum(_content_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        # The SuperLink answers for a node lost mid-round under its own id: map each reply to
        # the node of the message it answers (ids are set in place when pushed).
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        for reply in replies:
            node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            self.repliers.add(node)
            if reply.has_error():
                self.failed.setdefault(node, f"client error: {reply.error.reason}")
                continue
            self.bytes_received += _content_bytes(reply.content)
            if "metrics" in reply.content:
                self.metrics[node] = reply.content["metrics"]
        return replies

    # The rest of the Grid interface is the run's Grid's.
    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("SecAgg+ exchanges messages through send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("SecAgg+ exchanges messages through send_and_receive only")


def _content_bytes(content: RecordDict) -> int:
    """:func:`~.strategy.record_bytes`, for SecAgg+'s records too: they may hold empty lists
    (no dropped neighbours), which Flower's ``ConfigRecord.count_bytes`` cannot count."""
    total = 0
    for record in content.values():
        if isinstance(record, ConfigRecord):
            empty = [key for key, value in record.items() if isinstance(value, list) and not value]
            if empty:
                total += sum(len(key) for key in empty)  # a key's bytes, as Flower counts them
                record = ConfigRecord({k: v for k, v in record.items() if k not in empty})
        total += record.count_bytes()
    return total


# ---------------------------------------------------------------------------- client
def secure_aggregation_mod(msg: Message, context: Context, call_next: NextHandler) -> Message:
    """Train messages of the SecAgg+ protocol go through Flower's ``secaggplus_mod``; the
    others (plain rounds) pass straight to the train function."""
    if not flower_compat.is_secagg_message(msg):
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, partial(_train_in_legacy_layout, call_next=call_next))


def _train_in_legacy_layout(msg: Message, context: Context, *, call_next: NextHandler) -> Message:
    """Run the ordinary train on a legacy FitIns message; reply with the payload as a legacy
    FitRes (which ``secaggplus_mod`` quantises and masks) plus the metrics record."""
    arrays, legacy_config = flower_compat.read_fit_instructions(msg.content)
    config = dict(legacy_config)
    names = [str(name) for name in config.pop(ARRAY_NAMES_KEY)]
    clipping_range = float(config.pop(CLIPPING_RANGE_KEY))
    received = ArrayRecord({name: Array(array) for name, array in zip(names, arrays, strict=True)})
    legacy_content = msg.content
    msg.content = RecordDict({"arrays": received, "config": ConfigRecord(config)})
    try:
        reply = call_next(msg, context)
    finally:
        msg.content = legacy_content
    state = reply.content["arrays"].to_torch_state_dict()
    metrics = reply.content["metrics"]
    check_payload(state, names, float(metrics["train-loss"]), clipping_range)
    payload = [state[name].numpy() for name in names]
    content = flower_compat.fit_result_content(payload, int(metrics["num-examples"]))
    content["metrics"] = metrics
    reply.content = content
    return reply


def check_payload(
    state: dict[str, torch.Tensor], names: Sequence[str], train_loss: float, clipping_range: float
) -> None:
    """Raise ValueError (the client fails the round) unless ``state`` can enter the secure sum:
    the expected arrays, float, finite, every value within ``±clipping_range``."""
    if set(state) != set(names):
        raise ValueError(f"the update's arrays differ from the global state's ({sorted(state)})")
    reason = is_finite_update(state, train_loss)
    if reason:
        raise ValueError(f"the update cannot be securely aggregated: {reason}")
    for name in names:
        tensor = state[name]
        if not tensor.is_floating_point():
            raise ValueError(f"'{name}' is {tensor.dtype}: SecAgg+ quantises float values only")
        largest = float(tensor.abs().max()) if tensor.numel() else 0.0
        if largest > clipping_range:
            raise ValueError(
                f"'{name}' has a value of size {largest:.4g}, outside the SecAgg+ range "
                f"±{clipping_range:g} (raise --secagg_clipping_range)"
            )
