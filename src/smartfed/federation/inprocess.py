"""An in-process Flower ``Grid``: the ServerApp and ClientApps run in one process, one after the
other, with no Ray and no sockets.

Flower 1.42 ships no Ray-free in-process engine (its simulation always builds a Ray backend),
so this is the smallest Grid that delivers messages to a ``ClientApp`` object directly. Each
message goes through Flower's own serialisation (deflate + inflate) on the way down and up, so
clients get private copies, exactly as over the wire, and the apps are the same ones that run
on SuperLink + SuperNodes. A ClientApp that raises becomes an error reply, as a SuperNode does.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)


def _wire_copy(message: Message) -> Message:
    """Serialise and deserialise ``message`` as Flower's transport does."""
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    copy = inflate_object_from_contents(message.object_id, contents)
    # The message id is transport metadata, assigned by the SuperLink, not part of the payload.
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict[str, Any],
        run_id: int = 1,
    ):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self._run.override_config = dict(run_config)
        self.node_ids = list(range(1, num_nodes + 1))  # 0 is the SuperLink's own id
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
        # Flower's Message constructor reads the sender's identity from TaskIdentity.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def server_context(self) -> Context:
        return Context(
            run_id=self._run.run_id,
            node_id=SUPERLINK_NODE_ID,
            node_config={},
            state=RecordDict(),
            run_config=dict(self._run.override_config),
        )

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
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            message.metadata.__dict__["_created_at"] = time.time()
            instruction = _wire_copy(message)
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.client_app(instruction, context)
            except Exception as exc:
                log.debug("client %s raised:\n%s", context.node_id, traceback.format_exc())
                reply = Message(
                    Error(
                        code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                        reason=f"{type(exc).__name__}: {exc}",
                    ),
                    reply_to=instruction,
                )
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            reply = _wire_copy(reply)
            self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
