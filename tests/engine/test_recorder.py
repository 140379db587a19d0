"""The run recorder without Flower: fake round reports in, run directory out."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from smartfed.engine.config import RunConfig
from smartfed.engine.method import FederatedMethod, ServerLogic
from smartfed.engine.recorder import RoundReport, RunRecorder, load_resume_state
from smartfed.engine.rundir import RunDirectory
from smartfed.errors import ConfigError, DamagedFileError


class _Pool:
    def __init__(self):
        self.names, self.num_parameters = ["pa", "pb"], 1234

    def fingerprint(self) -> str:
        return "pool-fp"


class _Logic(ServerLogic):
    """Server state: the round config it will send next (``k``), like SmartFed's quotas."""

    def __init__(self):
        self.k = 1

    def round_config(self):
        return {"k": self.k}

    def round_fields(self, used_config):
        return {"quotas": [used_config["k"]] * 2}

    def state_dict(self):
        return {"k": self.k}

    def load_state_dict(self, state):
        self.k = state["k"]


class _Method(FederatedMethod):
    name = "fake"
    summary = "a two-parameter model"
    reuses_pool = False

    def build(self, base_model, pool, config):
        return base_model

    def server_logic(self, config):
        return _Logic()

    def apply_round_config(self, round_config):
        self.applied = dict(round_config)

    def save_final(self, directory: Path) -> None:
        (directory / "w.json").write_text(json.dumps(self.model.weight.tolist()))

    def load_final(self, directory: Path) -> None:
        raise NotImplementedError

    def routing_usage(self, batches):
        return {"layer.q_proj": {"pa": 0.25, "pb": 0.75}} if list(batches) else None


class _ClientEvalMethod(_Method):
    evaluates_on_clients = True
    has_global_model = False


class _Meter:
    """An energy meter with scripted readings (None: unmeasured)."""

    method = "scripted"

    def __init__(self, readings, total):
        self.readings, self.total = list(readings), total
        self.started = self.stopped = False

    def start(self):
        self.started = True
        return self

    def cumulative_kwh(self):
        return self.readings.pop(0)

    def stop(self):
        self.stopped = True
        return self.total


def _config(tmp_path: Path, **overrides) -> RunConfig:
    values = dict(output_dir=str(tmp_path / "run"), num_rounds=3, eval_every=2, eval_samples=4)
    return RunConfig(**{**values, **overrides})


def _method(config: RunConfig, cls: type[_Method] = _Method) -> _Method:
    torch.manual_seed(0)
    return cls(nn.Linear(2, 1, bias=False), _Pool(), config)


def _recorder(config, meter, resumed=None, partitions=(), *, method=_Method) -> RunRecorder:
    return RunRecorder(config, _method(config, method), resumed, model_name="tiny",
                       partitions=list(partitions), energy_meter=meter)  # fmt: skip


def _state(r: int) -> dict[str, torch.Tensor]:
    return {"weight": torch.full((1, 2), float(r))}


def _report(r: int, **fields) -> RoundReport:
    values = dict(
        sampled=[1, 2], bytes_down=100 * r, bytes_up=10 * r, train_loss=1.0 / r,
        step_time_s=0.5, round_config={"k": r}, started=time.time() - 1.0,
    )  # fmt: skip
    values.update(fields)
    return RoundReport(server_round=r, **values)


def _evaluation(r: int) -> dict[str, float]:
    return {"eval_loss": 2.0 / r, "eval_ppl": 9.0, "eval_tokens": 8, "eval_loss_sum": 16.0 / r}


def _play(recorder: RunRecorder, rounds) -> None:
    """One finished round after another, as the strategy and the ServerApp hand them over."""
    for r in rounds:
        recorder.server_logic.k = r + 1  # aggregation: the next round's config (EEQA)
        evaluation = _evaluation(r) if recorder.evaluates_on_server(r) else None
        recorder.record_round(_report(r, dropped={3: "no reply"} if r == 2 else {}),
                              _state(r), evaluation)  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rows_totals_checkpoint_final_and_summary(tmp_path, capsys):
    config = _config(tmp_path)
    meter = _Meter([0.1, 0.2, 0.3], total=0.35)
    recorder = _recorder(config, meter, load_resume_state(config), [{"size": 3}, {"size": 5}])
    method = recorder.method
    assert recorder.rounds_left == 3 and recorder.needs_initial_eval
    with recorder.measuring_energy():
        recorder.record_initial_eval(_evaluation(1))
        _play(recorder, [1, 2, 3])
    summary = recorder.finish(_state(3), usage_batches=[{}], final_metric=lambda: {"value": 0.5})
    run = Path(config.output_dir)

    rows = _rows(run)
    assert rows == recorder.rows
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert ["eval_loss" in r for r in rows] == [False, True, True]  # every 2nd, and the last
    assert not any("eval_loss_sum" in r or "bytes_eval" in r for r in rows)
    assert rows[1]["eval_loss"] == 1.0 and rows[1]["eval_tokens"] == 8
    assert [r["quotas"] for r in rows] == [[1, 1], [2, 2], [3, 3]]  # the config each round used
    assert [r["dropped_clients"] for r in rows] == [{}, {"3": "no reply"}, {}]
    assert [r["energy_kwh"] for r in rows] == [0.1, 0.2, 0.3]
    assert [r["bytes_down"] for r in rows] == [100, 200, 300]
    assert all(r["wall_s"] >= 1.0 for r in rows)

    totals = recorder.totals
    assert totals["bytes_down"] == 600 and totals["bytes_up"] == 60
    assert totals["wall_s"] == pytest.approx(sum(r["wall_s"] for r in rows))
    assert totals["energy_kwh"] == 0.3 and "energy_unavailable" not in totals
    assert totals["initial_eval"] == {"eval_loss": 2.0, "eval_ppl": 9.0, "eval_tokens": 8}
    assert totals["last_round_config"] == {"k": 3}

    run_dir = RunDirectory(run)
    assert sorted(p.name for p in run_dir.checkpoints.iterdir()) == ["round_0002", "round_0003"]
    state = run_dir.latest_checkpoint()
    assert state.round == 3 and state.server_logic == {"k": 4}
    torch.testing.assert_close(state.global_state["weight"], _state(3)["weight"])
    assert state.totals["bytes_down"] == 600

    assert json.loads((run / "config.json").read_text())["num_rounds"] == 3
    assert json.loads((run / "partitions.json").read_text())["clients"][1] == {"size": 5}
    assert json.loads((run / "final" / "w.json").read_text()) == [[3.0, 3.0]]
    assert method.applied == {"k": 3}  # the final model runs under the last round's config
    usage = json.loads((run / "usage.json").read_text())
    assert usage == {"method": "fake", "matrices": {"layer.q_proj": {"pa": 0.25, "pb": 0.75}}}

    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["bytes_down"] == 600 and summary["bytes_up"] == 60
    assert summary["energy_kwh"] == 0.35  # the meter's own total at the end
    assert summary["energy_method"] == "scripted"
    assert summary["final_eval"] == {"round": 3, "eval_loss": 2.0 / 3, "eval_ppl": 9.0}
    assert summary["final_train_loss"] == pytest.approx(1 / 3)
    assert summary["mean_step_time_s"] == 0.5
    assert summary["trainable_parameters"] == summary["communicated_parameters"] == 2
    assert summary["lora_equivalent_parameters"] == 1234 and summary["pool"] == ["pa", "pb"]
    assert summary["model"] == "tiny" and summary["final_dir"] == str(run / "final")
    assert summary["final_metric"] == {"value": 0.5}
    assert list(summary)[-1] == "final_metric"

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round")]
    assert len(lines) == 3
    assert re.fullmatch(
        r"round 2/3 \| loss 0\.5000 \| eval 1\.0000 \| down 0\.00 MiB \| up 0\.00 MiB \| "
        r"\d+\.\d s \| K 2-2 \| dropped 1",
        lines[1],
    ), lines[1]


def test_a_round_not_committed_leaves_no_row_and_is_replayed(tmp_path, monkeypatch):
    config = _config(tmp_path)
    first = _recorder(config, _Meter([0.1, 0.2, 0.3], total=None))
    with first.measuring_energy():
        first.record_initial_eval(_evaluation(1))
        _play(first, [1, 2])

        def killed(state):  # kill -9 while round 3's checkpoint is being written
            raise KeyboardInterrupt

        monkeypatch.setattr(first.run_dir, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            _play(first, [3])
    run = Path(config.output_dir)
    # The checkpoint commits a round: no row describes round 3, which was not checkpointed.
    assert [r["round"] for r in _rows(run)] == [1, 2]

    with pytest.raises(ConfigError, match="--resume"):
        load_resume_state(config)
    config = replace(config, resume=True)
    resumed = load_resume_state(config)
    assert resumed.round == 2
    recorder = RunRecorder(config, _method(config), resumed, model_name="tiny", partitions=[])
    assert [r["round"] for r in recorder.rows] == [1, 2]
    assert [r["round"] for r in _rows(run)] == [1, 2]
    assert recorder.rounds_done == 2 and recorder.rounds_left == 1
    assert not recorder.needs_initial_eval
    assert recorder.server_logic.k == 3  # restored: round 3 replays with the same config
    assert recorder.totals["bytes_down"] == 300
    assert recorder.meter.offset_kwh == 0.2  # energy carries on from the checkpoint

    recorder.meter = _Meter([0.3], total=0.31)
    with recorder.measuring_energy():
        _play(recorder, [3])
    summary = recorder.finish(_state(3))
    assert [r["round"] for r in _rows(run)] == [1, 2, 3]
    assert summary["rounds"] == 3 and summary["bytes_down"] == 600
    assert summary["initial_eval"]["eval_loss"] == 2.0
    assert summary["final_metric"] is None


def test_unmeasured_energy_is_none_not_zero(tmp_path):
    config = _config(tmp_path)
    recorder = _recorder(config, _Meter([0.1, None, 0.3], total=0.4))
    with recorder.measuring_energy():
        _play(recorder, [1, 2, 3])
    summary = recorder.finish(_state(3))
    assert [r["energy_kwh"] for r in recorder.rows] == [0.1, None, 0.3]
    assert recorder.totals["energy_unavailable"] is True
    # One missing reading makes the whole run's total unknown, whatever the meter says later.
    assert summary["energy_kwh"] is None

    # A resumed run keeps it unknown.
    config = replace(config, resume=True, num_rounds=4)
    again = _recorder(config, _Meter([0.5], total=0.5), load_resume_state(config))
    with again.measuring_energy():
        _play(again, [4])
    assert again.finish(_state(4))["energy_kwh"] is None


def test_no_energy_at_all_is_none(tmp_path):
    from smartfed.telemetry import EnergyMeter

    config = _config(tmp_path)
    recorder = _recorder(config, EnergyMeter(enabled=False))
    with recorder.measuring_energy():
        _play(recorder, [1])
    assert recorder.rows[0]["energy_kwh"] is None
    assert recorder.finish(_state(1))["energy_kwh"] is None


def test_meter_stops_when_a_round_fails(tmp_path):
    config = _config(tmp_path)
    meter = _Meter([], total=None)
    recorder = _recorder(config, meter)
    with pytest.raises(RuntimeError), recorder.measuring_energy():
        raise RuntimeError("round 1 failed")
    assert meter.started and meter.stopped


def test_client_evaluation_comes_with_the_report(tmp_path):
    config = _config(tmp_path)
    recorder = _recorder(config, _Meter([0.1, 0.2, 0.3], total=0.3), method=_ClientEvalMethod)
    assert not any(recorder.evaluates_on_server(r) for r in (1, 2, 3))
    with recorder.measuring_energy():
        for r in (1, 2, 3):
            client_eval = _evaluation(r) if recorder.is_eval_round(r) else None
            recorder.record_round(_report(r, client_eval=client_eval, bytes_eval=7), _state(r))
    rows = recorder.rows
    assert ["eval_loss" in r for r in rows] == [False, True, True]
    assert [r.get("bytes_eval") for r in rows] == [None, 7, 7]
    summary = recorder.finish(_state(3), usage_batches=[{}])
    assert summary["final_dir"] is None and "final_metric" not in summary
    run = Path(config.output_dir)
    assert not (run / "final").exists() and not (run / "usage.json").exists()


def test_a_method_without_rounds_is_final_as_it_starts(tmp_path):
    class _Static(_Method):
        trains = False

    config = _config(tmp_path)
    recorder = _recorder(config, _Meter([], total=0.0), method=_Static)
    assert recorder.rounds_left == 0
    with recorder.measuring_energy():
        recorder.record_initial_eval(_evaluation(1))
    summary = recorder.finish(_state(0))
    assert summary["rounds"] == 0 and summary["bytes_up"] == 0
    assert summary["final_eval"] == {"round": 0, "eval_loss": 2.0, "eval_ppl": 9.0}
    assert summary["energy_kwh"] == 0.0  # measured zero stays zero
    assert (Path(config.output_dir) / "metrics.jsonl").read_text() == ""


def test_a_row_lost_after_its_checkpoint_is_restored_on_resume(tmp_path, monkeypatch):
    config = _config(tmp_path)
    first = _recorder(config, _Meter([0.1, 0.2], total=None))
    with first.measuring_energy():
        _play(first, [1])

        def killed(rows):  # kill -9 after round 2's checkpoint, before its metrics row
            raise KeyboardInterrupt

        monkeypatch.setattr(first.run_dir, "write_metrics", killed)
        with pytest.raises(KeyboardInterrupt):
            _play(first, [2])
    run = Path(config.output_dir)
    assert [r["round"] for r in _rows(run)] == [1]

    config = replace(config, resume=True)
    resumed = load_resume_state(config)
    assert resumed.round == 2
    recorder = _recorder(config, _Meter([0.3], total=0.3), resumed)
    assert [r["round"] for r in _rows(run)] == [1, 2]  # round 2's row, from its checkpoint
    assert _rows(run)[1]["quotas"] == [2, 2] and recorder.rounds_left == 1


@pytest.mark.parametrize("damage", ["truncated", "empty_state", "missing", "bad_checksums"])
def test_resume_passes_over_a_damaged_newest_checkpoint(tmp_path, caplog, damage):
    config = _config(tmp_path)
    recorder = _recorder(config, _Meter([0.1, 0.2], total=None))
    with recorder.measuring_energy():
        _play(recorder, [1, 2])
    newest = RunDirectory(config.output_dir).checkpoints / "round_0002"
    if damage == "truncated":
        path = newest / "global_state.safetensors"
        path.write_bytes(path.read_bytes()[:-3])
    elif damage == "empty_state":
        (newest / "state.json").write_text("{}")
    elif damage == "missing":
        (newest / "state.json").unlink()
    else:
        (newest / "checksums.json").write_text("{")

    resumed = load_resume_state(replace(config, resume=True))
    assert resumed.round == 1 and resumed.server_logic == {"k": 2}
    assert [r["round"] for r in resumed.metrics] == [1]
    torch.testing.assert_close(resumed.global_state["weight"], _state(1)["weight"])
    said = [r.getMessage() for r in caplog.records if "resuming from round 1" in r.getMessage()]
    assert len(said) == 1 and str(newest) in said[0]

    # Every checkpoint damaged: one line, and nothing is continued from scratch silently.
    (RunDirectory(config.output_dir).checkpoints / "round_0001" / "state.json").write_text("{}")
    with pytest.raises(DamagedFileError, match=r"no intact checkpoint in .*--overwrite"):
        load_resume_state(replace(config, resume=True))


def test_a_checkpoint_keeps_the_order_of_the_global_state(tmp_path):
    from smartfed.engine.rundir import ServerState

    run_dir = RunDirectory(tmp_path / "run")
    state = {name: torch.full((2,), float(i)) for i, name in enumerate(["z", "b.y", "a", "b.x"])}
    run_dir.save_checkpoint(ServerState(round=1, global_state=state, server_logic={}))
    assert list(run_dir.latest_checkpoint().global_state) == ["z", "b.y", "a", "b.x"]
    checksums = json.loads((run_dir.checkpoints / "round_0001" / "checksums.json").read_text())
    assert set(checksums) == {"global_state.safetensors", "state.json"}
