"""A run you can watch: ``--report_to tensorboard`` on a real in-process run, read back from the
event files; the round's progress (sampled clients × local steps); ``--report_to`` errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from smartfed.cli.main import main
from smartfed.federation import inprocess
from smartfed.federation.runner import run_federated
from smartfed.telemetry import reporting

from ..telemetry.test_reporting import read_scalars


@pytest.mark.integration  # a whole run end to end
def test_tensorboard_holds_every_rounds_eval_loss(tiny_run_config, monkeypatch, capsys):
    bars = []
    original = inprocess.round_progress

    def recording(label, total, **options):
        bars.append((label, total))
        return original(label, total, **options)

    monkeypatch.setattr(inprocess, "round_progress", recording)
    config = tiny_run_config(num_rounds=2, report_to="tensorboard")
    summary = run_federated(config)
    run = Path(config.output_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    scalars = read_scalars(run / "tensorboard")
    expected = [(0, summary["initial_eval"]["eval_loss"])]
    expected += [(row["round"], row["eval_loss"]) for row in rows]
    assert [step for step, _ in scalars["loss/eval"]] == [0, 1, 2]
    for (step, value), (want_step, want) in zip(scalars["loss/eval"], expected, strict=True):
        assert step == want_step and value == pytest.approx(want, rel=1e-6)  # float32 events
    assert scalars["loss/train"] == [(r["round"], pytest.approx(r["train_loss"])) for r in rows]
    assert [v for _, v in scalars["bytes/up"]] == [r["bytes_up"] for r in rows]
    assert scalars["bytes/up_total"][-1][1] == summary["bytes_up"]
    assert [v for _, v in scalars["quotas/max"]] == [max(r["quotas"]) for r in rows]
    assert len(scalars["energy/kwh_total"]) == 2

    # One bar per round over sampled clients × local steps; here (no terminal) one line each.
    assert bars == [("round 1/2", 2 * 2), ("round 2/2", 2 * 2)]
    lines = [line for line in capsys.readouterr().err.splitlines() if " client " in line]
    assert len(lines) == 2 * 2, lines
    assert all(re.match(r"round [12]/2 client \d+: 2 steps, loss \d", line) for line in lines)


def test_report_to_wandb_without_wandb_is_one_line_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(reporting, "_installed", lambda package: package != "wandb")
    capsys.readouterr()
    code = main(["run", "--report_to", "wandb", "--output_dir", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("smartfed: error: --report_to wandb needs the wandb package")
    assert not (tmp_path / "run").exists()
