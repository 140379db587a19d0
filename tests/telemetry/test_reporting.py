"""``--report_to`` backends: TensorBoard event files read back, resume without duplicate steps,
wandb through a stand-in module (wandb itself is optional and not installed for the tests)."""

from __future__ import annotations

import sys
import types

import pytest

from smartfed.engine.config import REPORT_TO
from smartfed.errors import ConfigError
from smartfed.telemetry import reporting
from smartfed.telemetry.reporting import check_reporter, open_reporter, reporter_names


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard log directory as (step, value), as TensorBoard shows
    them (events an earlier process wrote past a resume's purge step are dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_every_report_to_choice_has_a_reporter():
    assert set(reporter_names()) == set(REPORT_TO)


def test_tensorboard_scalars_and_histograms_read_back(tmp_path):
    reporter = open_reporter("tensorboard", tmp_path, config={"num_rounds": 2})
    reporter.log(0, {"loss/eval": 3.0})
    reporter.log(1, {"loss/eval": 2.5, "loss/train": 2.75}, {"quotas": [1, 3, 2]})
    reporter.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["loss/eval"] == [(0, 3.0), (1, 2.5)]
    assert scalars["loss/train"] == [(1, 2.75)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    (histogram,) = accumulator.Histograms("quotas")
    assert histogram.step == 1 and histogram.histogram_value.num == 3
    assert histogram.histogram_value.sum == 6


def test_a_resumed_tensorboard_log_replaces_the_unfinished_rounds(tmp_path):
    crashed = open_reporter("tensorboard", tmp_path)
    for step in range(4):  # steps 0-3 written; the run crashed before round 3's checkpoint
        crashed.log(step, {"loss/eval": float(10 - step)})
    crashed.close(failed=True)
    resumed = open_reporter("tensorboard", tmp_path, first_step=3)  # checkpoint of round 2
    resumed.log(3, {"loss/eval": 1.5})
    resumed.log(4, {"loss/eval": 1.0})
    resumed.close()
    steps = read_scalars(tmp_path / "tensorboard")["loss/eval"]
    assert steps == [(0, 10.0), (1, 9.0), (2, 8.0), (3, 1.5), (4, 1.0)]


def test_a_missing_backend_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(reporting, "_installed", lambda package: package != "wandb")
    check_reporter("tensorboard")
    check_reporter("none")
    with pytest.raises(ConfigError) as error:
        check_reporter("wandb")
    message = str(error.value)
    assert "\n" not in message and "pip install 'smartfed[wandb]'" in message
    assert "WANDB_MODE=offline" in message


class _FakeRun:
    def __init__(self, calls):
        self.calls = calls

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module recording what the reporter asks of it."""
    calls: list = []
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", kwargs))
        if module.refuse:
            raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=...)\nmore")
        return _FakeRun(calls)

    module.init, module.refuse = init, False
    module.Histogram = lambda values: ("histogram", tuple(values))
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(reporting, "_installed", lambda package: True)
    module.calls = calls
    return module


def test_wandb_logs_each_step_and_a_resume_continues_the_same_run(tmp_path, fake_wandb):
    run_dir = tmp_path / "run"
    reporter = open_reporter("wandb", run_dir, config={"seed": 3})
    reporter.log(1, {"loss/eval": 2.0}, {"quotas": [1, 2]})
    reporter.close(failed=True)
    resumed = open_reporter("wandb", run_dir, first_step=2, config={"seed": 3})
    resumed.close()

    calls = fake_wandb.calls
    first, again = calls[0][1], calls[3][1]
    assert first["dir"] == str(run_dir) and first["config"] == {"seed": 3}
    assert first["resume"] == "allow" and first["name"] == "run"
    assert first["id"] == again["id"] == (run_dir / "wandb-run-id").read_text().strip()
    assert calls[1] == ("log", 1, {"loss/eval": 2.0, "quotas": ("histogram", (1.0, 2.0))})
    assert calls[2] == ("finish", 1) and calls[4] == ("finish", 0)


def test_wandb_that_cannot_start_is_one_line(tmp_path, fake_wandb):
    fake_wandb.refuse = True
    with pytest.raises(ConfigError) as error:
        open_reporter("wandb", tmp_path)
    message = str(error.value)
    assert "\n" not in message and "api_key not configured" in message
    assert "WANDB_MODE=offline" in message
