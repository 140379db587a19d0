"""A ClientApp that crashes at one round: the resume tests of every engine share it."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from smartfed.federation import client_app as smartfed_client


class CrashAtRound:
    """A ClientApp that dies (like kill -9: a BaseException nothing catches) at one round."""

    def __init__(self, round_to_crash: int):
        self.round_to_crash = round_to_crash
        self.app = ClientApp()
        self.app.train()(self.train)

    def train(self, msg: Message, context: Context) -> Message:
        if int(msg.content["config"]["server-round"]) == self.round_to_crash:
            raise KeyboardInterrupt("simulated crash")
        return smartfed_client.train(msg, context)
