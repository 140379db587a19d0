"""A ClientApp with one Byzantine client: it trains honestly, then corrupts its reply.

Attacks, on the update ``delta = trained - global`` the client computed honestly (the global
state being what the server sent this round):

- ``scale``: sends ``global + 1e3 * delta`` (a boosted update: far too long, right direction);
- ``sign_flip``: sends ``global - SIGN_FLIP_BOOST * delta`` (pointing back, boosted so that in
  a plain mean it outweighs the other four clients' progress);
- ``inflate_importance``: sends its payload unchanged, but an importance vector that claims
  ``IMPORTANCE_CLAIM`` for the first matrix and 0 elsewhere, to grab EEQA's quota budget.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from smartfed.federation import client_app as smartfed_client

SCALE = 1e3
SIGN_FLIP_BOOST = 10.0
IMPORTANCE_CLAIM = 1e6


def _shift_update(factor: float) -> Callable[[dict, Message], None]:
    def attack(sent: dict[str, np.ndarray], reply: Message) -> None:
        trained = reply.content["arrays"]
        corrupted = {}
        for name, array in trained.items():
            start = sent[name].astype(np.float64)
            delta = array.numpy().astype(np.float64) - start
            corrupted[name] = Array((start + factor * delta).astype(np.float32))
        reply.content["arrays"] = ArrayRecord(corrupted)

    return attack


def _inflate_importance(sent: dict[str, np.ndarray], reply: Message) -> None:
    metrics = dict(reply.content["metrics"])
    claim = [0.0] * len(metrics["importance"])
    claim[0] = IMPORTANCE_CLAIM
    metrics["importance"] = claim
    reply.content["metrics"] = MetricRecord(metrics)


ATTACKS: dict[str, Callable[[dict, Message], None]] = {
    "scale": _shift_update(SCALE),
    "sign_flip": _shift_update(-SIGN_FLIP_BOOST),
    "inflate_importance": _inflate_importance,
}


class AttackingClients:
    """Partition ``attacker`` corrupts every reply it sends with ``attack``; the others are
    SmartFed's own ClientApp."""

    def __init__(self, attack: str | None, attacker: int = 0):
        self.attack = ATTACKS[attack] if attack else None
        self.attacker = attacker
        self.honest_update_norms: list[float] = []  # L2 norms of the honest clients' updates
        self.app = ClientApp()
        self.app.train()(self.train)

    def train(self, msg: Message, context: Context) -> Message:
        sent = {name: array.numpy().copy() for name, array in msg.content["arrays"].items()}
        reply = smartfed_client.train(msg, context)
        if self.attack and int(context.node_config["partition-id"]) == self.attacker:
            self.attack(sent, reply)
        else:
            trained = reply.content["arrays"]
            squares = sum(
                float(np.square(trained[k].numpy().astype(np.float64) - sent[k]).sum())
                for k in sent
            )
            self.honest_update_norms.append(squares**0.5)
        return reply
