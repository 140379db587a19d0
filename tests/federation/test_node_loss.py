"""A node lost mid-run: it is counted once, under its own id, and later rounds run with the
survivors instead of waiting for every node.

The fast tests use the real strategy over the in-process grid, with a wrapper that loses a node
the way a SuperLink does (still listed for a round, answered for by the SuperLink with a
"Node Unavailable" error, then gone). The slow test kills a real SuperNode mid-run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from smartfed.engine.method import ServerLogic
from smartfed.engine.recorder import RoundReport
from smartfed.federation.inprocess import InProcessGrid
from smartfed.federation.settings import to_run_config
from smartfed.federation.strategy import RoundFailed, SmartFedStrategy

from .test_deployment import (
    APP_DIR,
    BIN,
    _declared,
    _free_ports,
    _Processes,
    _toml_value,
    _wait_for_port,
    flower_env,
)

CLIENTS = 3


def _client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        state = msg.content["arrays"].to_torch_state_dict()
        updated = {name: value + 0.01 for name, value in state.items()}
        metrics = {"num-examples": 4, "train-loss": 1.0, "tokens": 5, "step-time-s": 0.1}
        return Message(
            RecordDict({"arrays": ArrayRecord(updated), "metrics": MetricRecord(metrics)}),
            reply_to=msg,
        )

    return app


class LosingGrid(InProcessGrid):
    """Loses ``lost`` after round ``after``: the next round still lists it and the SuperLink
    answers for it (src = the SuperLink's id); in the rounds after that it is gone."""

    def __init__(self, lost: int, after: int):
        super().__init__(_client_app(), CLIENTS, {})
        # Ids 11.., as a SuperLink's are never its own id 1 (the in-process grid counts from 1).
        self.contexts = {node + 10: context for node, context in self.contexts.items()}
        self.node_ids = sorted(self.contexts)
        self.lost, self.after, self.rounds = lost, after, 0

    def get_node_ids(self) -> Iterable[int]:
        gone = self.rounds > self.after  # counted when a round is sent
        return [node for node in self.node_ids if not (gone and node == self.lost)]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if any(m.metadata.message_type == "train" for m in messages):
            self.rounds += 1
        if self.rounds <= self.after:
            return super().send_and_receive(messages, timeout=timeout)
        alive = [m for m in messages if m.metadata.dst_node_id != self.lost]
        replies = list(super().send_and_receive(alive, timeout=timeout))
        for message in messages:
            if message.metadata.dst_node_id == self.lost:
                message.metadata.__dict__["_message_id"] = f"lost-{self.rounds}"
                error = create_message_error_unavailable_res_message(
                    message.metadata, "node_unavail"
                )
                assert error.metadata.src_node_id == SUPERLINK_NODE_ID
                replies.append(error)
        return replies


def _run(grid: InProcessGrid, *, sample: int, rounds: int, wait_s: float) -> list[RoundReport]:
    reports: list[RoundReport] = []
    strategy = SmartFedStrategy(
        num_clients=CLIENTS,
        sample_clients=sample,
        min_replies=1,
        server_logic=ServerLogic(),
        seed=0,
        on_round_end=lambda report, state: reports.append(report),
        node_wait_s=wait_s,
    )
    strategy.run(grid, {"w": torch.zeros(3)}, num_rounds=rounds)
    return reports


def test_a_lost_node_is_dropped_once_under_its_id_and_later_rounds_run_without_it(caplog):
    grid = LosingGrid(lost=12, after=1)
    assert SUPERLINK_NODE_ID not in grid.node_ids  # so a phantom id would show
    with caplog.at_level(logging.WARNING, logger="smartfed.federation.strategy"):
        reports = _run(grid, sample=CLIENTS, rounds=4, wait_s=0.3)
    assert [r.server_round for r in reports] == [1, 2, 3, 4]
    assert [sorted(r.sampled) for r in reports] == [[11, 12, 13], [11, 12, 13], [11, 13], [11, 13]]
    assert reports[0].dropped == {}
    assert list(reports[1].dropped) == [12]  # once, under its own id
    assert "Node Unavailable" in reports[1].dropped[12]
    assert reports[2].dropped == {} and reports[3].dropped == {}
    waits = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
    # Logged once per wait (rounds 3 and 4 each wait for sample_clients = 3), with the count.
    assert waits == [
        f"round {n}: 2 of 3 clients connected; waiting up to 0 s for 3" for n in (3, 4)
    ]


def test_after_round_one_the_server_waits_only_for_sample_clients(caplog, monkeypatch):
    grid = LosingGrid(lost=11, after=1)
    with caplog.at_level(logging.WARNING, logger="smartfed.federation.strategy"):
        # Waiting for all 3 would fail round 3 after 30 s: 2 nodes left are enough for 2 sampled.
        reports = _run(grid, sample=2, rounds=3, wait_s=30)
    assert [len(r.sampled) for r in reports] == [2, 2, 2]
    assert all(len(r.dropped) <= 1 for r in reports)
    assert not [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert 11 not in reports[2].sampled


def test_too_few_nodes_after_the_wait_stop_the_run_in_one_line():
    grid = InProcessGrid(_client_app(), CLIENTS, {})
    grid.node_ids = grid.node_ids[:1]
    strategy = SmartFedStrategy(
        num_clients=CLIENTS,
        sample_clients=2,
        min_replies=2,
        server_logic=ServerLogic(),
        seed=0,
        on_round_end=lambda report, state: None,
        node_wait_s=0.1,
    )
    with pytest.raises(RoundFailed) as failed:
        strategy.run(grid, {"w": torch.zeros(3)}, num_rounds=1)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("round 1: only 1 of 3 clients connected within 0 s, need at least 2")
    assert "--resume" in message


# ---------------------------------------------------------------------------- deployment
NODE_LOSS_TIMEOUT_S = 420.0


def _kill_tree(proc) -> None:
    """SIGKILL a SuperNode and everything it started: no goodbye to the SuperLink, which
    notices only when the heartbeats stop."""
    import psutil

    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_a_supernode_killed_mid_run_is_dropped_once_and_the_survivors_finish(
    tiny_run_config, tmp_path
):
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        assert (BIN / tool).exists() or shutil.which(tool), f"{tool} is not installed"
    run_dir = tmp_path / "deployed-run"
    config = tiny_run_config(
        num_clients=CLIENTS, sample_clients=2, num_rounds=3, eval_samples=4,
        output_dir=str(run_dir),
    )  # fmt: skip
    # Kill a node that round 2 samples (nodes are sampled in partition order): it is lost with
    # a message waiting for it, which the SuperLink answers for once its heartbeats stop.
    drawn = sorted(
        int(d) for d in np.random.default_rng([config.seed, 2]).choice(CLIENTS, 2, replace=False)
    )
    victim = drawn[0]
    declared = _declared()
    overrides = " ".join(
        f"{key}={_toml_value(value)}"
        for key, value in to_run_config(config).items()
        if key in declared and value != declared[key]
    )
    work = tmp_path / "flower"
    work.mkdir()
    superlink_port, *node_ports = _free_ports(1 + CLIENTS)
    names = ["superlink", "cli", *(f"node{i}" for i in range(CLIENTS))]
    homes = {name: work / f"home-{name}" for name in names}
    for home in homes.values():
        home.mkdir()
    (homes["cli"] / "config.toml").write_text(
        '[superlink]\ndefault = "smartfed-test"\n\n'
        f'[superlink.smartfed-test]\naddress = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )
    procs = _Processes(work, flower_env())
    started = time.monotonic()
    killed_at = None
    try:
        procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"), "--insecure",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(superlink_port),
            ],
            FLWR_HOME=str(homes["superlink"]),
        )  # fmt: skip
        _wait_for_port(superlink_port, procs)
        nodes = {}
        for partition, port in enumerate(node_ports):
            nodes[partition] = procs.start(
                f"node{partition}",
                [
                    str(BIN / "flower-supernode"), "--insecure",
                    "--superlink", f"127.0.0.1:{superlink_port}",
                    "--node-config", f"partition-id={partition} num-partitions={CLIENTS}",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                FLWR_HOME=str(homes[f"node{partition}"]),
            )  # fmt: skip
        run = procs.start(
            "flwr-run",
            [str(BIN / "flwr"), "run", str(APP_DIR), "smartfed-test", "--stream", "-c", overrides],
            FLWR_HOME=str(homes["cli"]),
        )
        metrics = run_dir / "metrics.jsonl"
        deadline = started + NODE_LOSS_TIMEOUT_S
        while run.poll() is None and time.monotonic() < deadline:
            if killed_at is None and metrics.exists() and metrics.read_text().strip():
                _kill_tree(nodes[victim])  # round 1 is recorded: round 2 is being sent
                killed_at = time.monotonic() - started
            for name, proc, _ in procs.started:
                if name not in ("flwr-run", f"node{victim}") and proc.poll() is not None:
                    raise AssertionError(f"{name} exited early with code {proc.returncode}")
            time.sleep(0.2)
        assert killed_at is not None, "round 1 was never recorded"
        assert run.poll() is not None, f"flwr run did not finish in {NODE_LOSS_TIMEOUT_S:.0f} s"
        assert run.returncode == 0, f"flwr run exited with code {run.returncode}"
        assert (run_dir / "summary.json").exists(), "the ServerApp wrote no summary.json"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [row["round"] for row in rows] == [1, 2, 3]
        assert rows[0]["dropped_clients"] == {}
        # Round 2 sampled the victim (its nodes are in partition order): dropped once, by id.
        lost = rows[1]["sampled_clients"][drawn.index(victim)]
        assert list(rows[1]["dropped_clients"]) == [str(lost)], rows[1]["dropped_clients"]
        assert "Node Unavailable" in rows[1]["dropped_clients"][str(lost)]
        # Round 3 ran with the two survivors, without waiting for the lost node.
        assert len(rows[2]["sampled_clients"]) == 2 and lost not in rows[2]["sampled_clients"]
        assert rows[2]["dropped_clients"] == {}
        print(f"node {lost} (partition {victim}) killed at {killed_at:.0f} s; run finished in "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip
    except BaseException:
        print(f"node-loss test failed after {time.monotonic() - started:.1f} s")
        print(f"run config overrides: {overrides}")
        procs.stop_all()
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
