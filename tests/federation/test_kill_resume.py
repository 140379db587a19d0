"""A real ``kill -9`` in the middle of a round, then ``--resume``: same routers as no crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _command(config, output_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "smartfed.cli.main", "run",
        "--model_name_or_path", config.model_name_or_path,
        "--lora_pool", config.lora_pool,
        "--task", config.task,
        "--num_clients", "4", "--sample_clients", "2", "--num_rounds", "3",
        "--local_steps", "40", "--batch_size", "4", "--learning_rate", "0.05",
        "--max_seq_len", "64", "--topk_experts", "3", "--eval_samples", "4",
        "--output_dir", str(output_dir),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def test_kill_9_mid_round_then_resume(tiny_run_config, tmp_path):
    config = tiny_run_config()
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    subprocess.run(_command(config, reference), env=_env(), check=True, timeout=300,
                   capture_output=True)  # fmt: skip

    process = subprocess.Popen(
        _command(config, crashed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while not (crashed / "checkpoints" / "round_0001").exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.time() < deadline, "round 1 never finished"
            time.sleep(0.05)
        time.sleep(0.3)  # well inside round 2 (each round trains 2 clients × 40 steps)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    rounds_done = [
        json.loads(x)["round"] for x in (crashed / "metrics.jsonl").read_text().splitlines()
    ]
    assert rounds_done in ([1], [1, 2]), rounds_done
    assert not (crashed / "summary.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "smartfed.cli.main", "run", "--resume", str(crashed)],
        env=_env(), capture_output=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    rows = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    expected = load_file(str(reference / "final" / "routers.safetensors"))
    got = load_file(str(crashed / "final" / "routers.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
