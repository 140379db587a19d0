"""An in-process Flower ``Grid``: the ServerApp and ClientApps run in one process, one after the
other, with no Ray and no sockets.

Flower 1.42 ships no Ray-free in-process engine (its simulation always builds a Ray backend),
so this is the smallest Grid that delivers messages to a ``ClientApp`` object directly. Each
message goes through Flower's own serialisation (deflate + inflate) on the way down and up, so
clients get private copies, exactly as over the wire, and the apps are the same ones that run
on SuperLink + SuperNodes. A ClientApp that raises becomes an error reply, as a SuperNode does.
The clients of one training round share one progress bar (:mod:`smartfed.telemetry.progress`).
What a SuperLink does that Flower does not export goes through :mod:`.flower_compat`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from smartfed.federation import flower_compat
from smartfed.telemetry.progress import round_progress

if TYPE_CHECKING:
    from smartfed.federation.flower_compat import Run

log = logging.getLogger(__name__)


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, Any],
        run_id: int = 1,
    ):
        flower_compat.check_flower_version()  # before any use of Flower internals
        self.client_app = client_app
        self._run = flower_compat.new_run(run_id, run_config)
        # Node ids 1..N: the sampling draws from them, so they are part of a run's record.
        self.node_ids = list(range(1, num_nodes + 1))
        self.contexts = {
            node_id: Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": index, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for index, node_id in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}
        # For the round's progress bar (SmartFed's run-config keys; absent: no bar).
        self._local_steps = run_config.get("local-steps")
        self._num_rounds = run_config.get("num-rounds")
        flower_compat.act_as_superlink(run_id)

    # ------------------------------------------------------------------ Grid API
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = []
        with self._training_progress(messages):
            for message in messages:
                ids.append(self._deliver(message))
        return ids

    def _deliver(self, message: Message) -> str:
        """Run the ClientApp on ``message``; keep its reply for :meth:`pull_messages`."""
        flower_compat.set_message_id(message, uuid4().hex)
        message.metadata.created_at = time.time()
        instruction = flower_compat.wire_copy(message)
        context = self.contexts[message.metadata.dst_node_id]
        try:
            reply = self.client_app(instruction, context)
        except Exception as exc:
            log.debug("client %s raised:\n%s", context.node_id, traceback.format_exc())
            error = flower_compat.client_app_error(f"{type(exc).__name__}: {exc}")
            reply = Message(error, reply_to=instruction)
        flower_compat.set_message_id(reply, uuid4().hex)
        reply = flower_compat.wire_copy(reply)
        self._replies[message.metadata.message_id] = reply
        return message.metadata.message_id

    def _training_progress(self, messages: list[Message]) -> AbstractContextManager:
        """One bar over a round's training (sampled clients × local steps); the clients run
        here, in turn, and advance it."""
        # Messages that train carry a state (SecAgg+'s key-exchange steps carry none).
        train = [
            m
            for m in messages
            if m.metadata.message_type == MessageType.TRAIN
            and any(isinstance(record, ArrayRecord) for record in m.content.values())
        ]
        if not train or not isinstance(self._local_steps, int):
            return nullcontext()
        configs = [r for r in train[0].content.values() if isinstance(r, ConfigRecord)]
        server_round = next((c["server-round"] for c in configs if "server-round" in c), None)
        label = f"round {server_round}/{self._num_rounds}" if server_round else "training"
        return round_progress(label, total=len(train) * self._local_steps)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
