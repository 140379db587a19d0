"""The recorder's ``--report_to`` side: what each round puts on the dashboard, and a resumed run
that shows every round once (no duplicate steps from the round that did not finish)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from smartfed.engine.recorder import dashboard_metrics, load_resume_state

from ..telemetry.test_reporting import read_scalars
from .test_recorder import _config, _evaluation, _Meter, _play, _recorder, _state


def test_a_row_becomes_scalars_and_histograms():
    row = {
        "round": 2, "train_loss": 1.5, "bytes_down": 100, "bytes_up": 10, "step_time_s": 0.5,
        "wall_s": 3.0, "energy_kwh": None, "dropped_clients": {"3": "no reply"},
        "quotas": [1, 2, 6], "importance": [0.25, 0.75], "eval_loss": 1.25,
    }  # fmt: skip
    scalars, histograms = dashboard_metrics(row, {"bytes_down": 300, "bytes_up": 30})
    # Unmeasured energy (None) is left out, not drawn as 0.
    assert scalars == {
        "loss/train": 1.5, "loss/eval": 1.25, "bytes/down": 100, "bytes/up": 10,
        "bytes/down_total": 300, "bytes/up_total": 30, "time/round_s": 3.0, "time/step_s": 0.5,
        "clients/dropped": 1, "quotas/min": 1, "quotas/max": 6, "quotas/mean": 3,
    }  # fmt: skip
    assert histograms == {"quotas": [1, 2, 6], "importance": [0.25, 0.75]}


def test_a_resumed_run_shows_every_round_once(tmp_path):
    config = _config(tmp_path, report_to="tensorboard", eval_every=1)
    first = _recorder(config, _Meter([0.1, 0.2, 0.3], total=None))

    def killed(_):  # killed after round 3 was committed and shown, before the summary
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), first.measuring_energy():
        first.record_initial_eval(_evaluation(1))
        _play(first, [1, 2, 3])
        killed(None)
    log_dir = tmp_path / "run" / "tensorboard"
    assert [step for step, _ in read_scalars(log_dir)["loss/eval"]] == [0, 1, 2, 3]
    # Round 3's checkpoint is then damaged: the resume falls back to round 2.
    damaged = tmp_path / "run" / "checkpoints" / "round_0003" / "global_state.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:20])

    config = replace(config, resume=True)
    resumed = _recorder(config, _Meter([0.3], total=0.3), load_resume_state(config))
    assert resumed.rounds_done == 2
    with resumed.measuring_energy():
        _play(resumed, [3])
    resumed.finish(_state(3))  # closes the reporter
    scalars = read_scalars(log_dir)
    assert [step for step, _ in scalars["loss/eval"]] == [0, 1, 2, 3]
    assert [step for step, _ in scalars["bytes/down_total"]] == [1, 2, 3]
    assert scalars["bytes/down_total"][-1][1] == 600  # 100 + 200 + 300: round 3 counted once
