"""Training progress: one bar per round (sampled clients × local steps) on a terminal, one plain
line per finished client elsewhere."""

from __future__ import annotations

import io
import re

import pytest

from smartfed.telemetry.progress import RoundProgress, client_progress, round_progress


def _train(client_id: int, steps: int, label: str = "round 1/2", first_loss: float = 2.0):
    """A client's local training as the ClientApp runs it: one ``on_step`` per step."""
    with client_progress(client_id, steps, label) as progress:
        for index in range(steps):
            progress.step(index, first_loss - 0.5 * index)


def test_a_round_bar_counts_every_clients_steps():
    stream = io.StringIO()
    with round_progress("round 3/5", total=2 * 3, stream=stream, interactive=True) as progress:
        assert progress.bar is not None and progress.bar.total == 6
        _train(4, 3)
        _train(7, 3, first_loss=1.25)
        assert progress.bar.n == progress.steps_done == 6
        assert progress.bar.postfix == "client=7, loss=0.2500"  # the current client and loss
    assert progress.bar is None  # closed with the round
    assert "round 3/5" in stream.getvalue()
    assert " client 4: " not in stream.getvalue()  # on a terminal: the bar, no lines


def test_not_a_terminal_gives_one_plain_line_per_client(capsys):
    with round_progress("round 1/2", total=4) as progress:  # stderr is captured: no terminal
        assert not progress.interactive and progress.bar is None
        _train(1, 2)
        _train(3, 2, first_loss=1.0)
    assert progress.steps_done == 4
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"round 1/2 client 1: 2 steps, loss 1\.7500 \(last 1\.5000\), \d+\.\d s",
                        lines[0])  # fmt: skip
    assert lines[1].startswith("round 1/2 client 3: 2 steps, loss 0.7500 (last 0.5000)")


def test_a_client_without_an_open_round_has_a_bar_of_its_own(capsys, monkeypatch):
    opened = []
    original = RoundProgress.__init__

    def spy(self, label, total, **options):
        opened.append((label, total))
        original(self, label, total, **options)

    monkeypatch.setattr(RoundProgress, "__init__", spy)
    _train(9, 3, label="round 2/4")  # a SuperNode or a simulation actor: no round open here
    assert opened == [("round 2/4", 3)]
    assert capsys.readouterr().err.startswith("round 2/4 client 9: 3 steps")


def test_a_failing_client_prints_no_line_and_the_round_closes(capsys):
    with (
        pytest.raises(RuntimeError),
        round_progress("round 1/1", total=4),
        client_progress(2, 2, "round 1/1") as progress,
    ):
        progress.step(0, 1.0)
        raise RuntimeError("out of memory")
    assert capsys.readouterr().err == ""
    _train(5, 1)  # the round is no longer open: the next client has its own bar
    assert capsys.readouterr().err.startswith("round 1/2 client 5: 1 step,")
