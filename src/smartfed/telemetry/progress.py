"""Progress of local training: a bar per round on a terminal, one plain line per client elsewhere.

A round trains ``sampled clients × local steps`` optimizer steps. Where the clients run in the
server's own process (the in-process engine), whoever runs them opens one :func:`round_progress`
for the round and every client's steps advance that one bar; elsewhere (a SuperNode, a
simulation actor) :func:`client_progress` gives each client a bar of its own. Typical use::

    with round_progress("round 3/20", total=2 * 10):         # the in-process grid, per round
        ...                                                   # the clients run here, in turn
    with client_progress(7, steps=10, label="round 3/20") as steps:   # the ClientApp
        train_local(..., on_step=steps.step)

On a terminal (stderr is a tty) the bar shows the current client and loss and disappears when
the round ends, leaving the server's one line per round. When stderr is not a terminal (logs,
pipes, tests), nothing is printed per step: each client prints one line when it finishes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

__all__ = ["ClientSteps", "RoundProgress", "client_progress", "round_progress"]

# The round whose clients run in this process, if any (the in-process engine runs them in turn).
_open_round: RoundProgress | None = None


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class RoundProgress:
    """The training steps of one round: ``total`` is sampled clients × local steps.

    Args:
        label: what the bar and the plain lines start with (``"round 3/20"``).
        total: the steps the round will run.
        stream: where to write (default: ``sys.stderr`` at the time of the call).
        interactive: a live bar (True) or one plain line per finished client (False);
            default: whether ``stream`` is a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
    ):
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.interactive = _is_terminal(self.stream) if interactive is None else interactive
        self.steps_done = 0
        self.bar: tqdm | None = None
        if self.interactive:
            # leave=False: the bar gives way to the server's line for the round.
            self.bar = tqdm(total=total, desc=label, unit="step", leave=False, file=self.stream,
                            dynamic_ncols=True)  # fmt: skip

    def client(self, client_id: int) -> ClientSteps:
        return ClientSteps(self, client_id)

    def advance(self, client_id: int, loss: float) -> None:
        self.steps_done += 1
        if self.bar is not None:
            self.bar.set_postfix(client=client_id, loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)

    def client_finished(self, steps: ClientSteps) -> None:
        if self.interactive or not steps.losses:
            return
        losses = steps.losses
        elapsed = time.perf_counter() - steps.started
        count = f"{len(losses)} step" + ("s" if len(losses) > 1 else "")
        print(
            f"{self.label} client {steps.client_id}: {count}, "
            f"loss {sum(losses) / len(losses):.4f} (last {losses[-1]:.4f}), {elapsed:.1f} s",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ClientSteps:
    """One client's share of a round: :meth:`step` is ``train_local``'s ``on_step``."""

    def __init__(self, round_progress: RoundProgress, client_id: int):
        self.round = round_progress
        self.client_id = client_id
        self.losses: list[float] = []
        self.started = time.perf_counter()

    def step(self, index: int, loss: float) -> None:
        self.losses.append(loss)
        self.round.advance(self.client_id, loss)

    def finish(self) -> None:
        self.round.client_finished(self)


@contextmanager
def round_progress(label: str, total: int, **options) -> Iterator[RoundProgress]:
    """One bar for a round whose clients run in this process, open while the block runs;
    ``options`` are :class:`RoundProgress`'s."""
    global _open_round
    progress = RoundProgress(label, total, **options)
    outer, _open_round = _open_round, progress
    try:
        yield progress
    finally:
        _open_round = outer
        progress.close()


@contextmanager
def client_progress(client_id: int, steps: int, label: str) -> Iterator[ClientSteps]:
    """One client's training steps: into the round's bar when the round is open in this
    process, else into a bar of its own (``steps`` long). A client that fails prints no line."""
    if _open_round is not None:
        share = _open_round.client(client_id)
        yield share
        share.finish()
        return
    own = RoundProgress(label, steps)
    try:
        share = own.client(client_id)
        yield share
        share.finish()
    finally:
        own.close()
