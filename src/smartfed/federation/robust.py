"""Robust aggregation of the clients' payloads: the glue between SmartFed's rule and Flower.

The math and its registry are Flower-free (:mod:`smartfed.robust`); each aggregator names the
message-API strategy of ``flwr.serverapp.strategy`` that implements it for payloads (``FedAvg``,
``FedMedian``, ``FedTrimmedAvg``, ``Krum``). SmartFed's strategy keeps its own sampling, reply
checks and byte counts, and hands the usable replies to that strategy's ``aggregate_train``.
``--clip_update_norm`` is applied here first, to every reply, against the global state the
round sent.
"""

from __future__ import annotations

import logging

import flwr.serverapp.strategy as flower_strategies
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import FedAvg

from smartfed.robust import AggregationRule, clip_update

log = logging.getLogger(__name__)


def payload_aggregator(rule: AggregationRule) -> FedAvg:
    """The Flower strategy whose ``aggregate_train`` combines payloads under ``rule``."""
    name, options = rule.flower_strategy()
    return getattr(flower_strategies, name)(**options)


def clip_replies(
    replies: list[Message], global_arrays: ArrayRecord, max_norm: float, server_round: int
) -> dict[int, float]:
    """Scale each reply's update (arrays minus ``global_arrays``) down to L2 norm ``max_norm``,
    in place; return every reply's update norm before clipping, by node."""
    reference = {name: array.numpy() for name, array in global_arrays.items()}
    norms: dict[int, float] = {}
    for reply in replies:
        state = {name: array.numpy() for name, array in reply.content["arrays"].items()}
        new_state, norm = clip_update(state, reference, max_norm)
        if norm > max_norm:
            reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in new_state.items()})
        norms[reply.metadata.src_node_id] = norm
    clipped = [norm for norm in norms.values() if norm > max_norm]
    if clipped:
        log.info(
            "round %d: clipped %d of %d updates to L2 norm %g (from %s)",
            server_round, len(clipped), len(replies), max_norm,
            ", ".join(f"{norm:.3g}" for norm in clipped),
        )  # fmt: skip
    return norms
