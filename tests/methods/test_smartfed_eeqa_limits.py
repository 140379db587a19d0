"""SmartFed's EEQA limits (k_max, eeqa_max_move), the taylor score and the k0 scale as settings,
in a tiny federated run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from smartfed.errors import ConfigError
from smartfed.federation.runner import run_federated
from smartfed.methods.smartfed import SmartFedSettings


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_limits_default_to_unset_and_keep_todays_eeqa():
    settings = SmartFedSettings()
    assert (settings.k_max, settings.eeqa_max_move) == (None, None)
    assert (settings.importance_score, settings.output_scale) == ("cosine", "k")
    assert SmartFedSettings(k_max=40, eeqa_max_move=2).k_max == 40


@pytest.mark.parametrize("name", ["k_max", "eeqa_max_move"])
@pytest.mark.parametrize("off", [{"enable_eeqa": False}, {"dense": True}])
def test_limits_are_eeqa_only(name, off):
    with pytest.raises(ConfigError, match=f"--{name} only applies with EEQA"):
        SmartFedSettings(**off, **{name: 40})
    assert name in SmartFedSettings.inapplicable(off)
    assert name not in SmartFedSettings.inapplicable({"topk_experts": 8})


def test_limit_bounds_are_checked():
    with pytest.raises(ConfigError, match=r"--k_max \(8\) must not be below --topk_experts \(16\)"):
        SmartFedSettings(topk_experts=16, k_max=8)
    with pytest.raises(ConfigError, match="--eeqa_max_move must be >= 1"):
        SmartFedSettings(eeqa_max_move=0)
    with pytest.raises(ConfigError, match="--output_scale must be one of"):
        SmartFedSettings(output_scale="k1")
    assert SmartFedSettings(output_scale="k0", importance_score="taylor").output_scale == "k0"


def test_a_preset_limit_is_dropped_under_dense(tiny_run_config):
    """A preset serves every variant: its EEQA limits vanish under an explicit --dense."""
    from smartfed.assembly.config import SettingValues

    values = SettingValues()
    values.add({"eeqa_max_move": 1, "k_max": 40}, "preset", from_preset=True)
    values.add({"dense": True}, "test")
    settings = values.config_for("smartfed").settings
    assert (settings.k_max, settings.eeqa_max_move) == (None, None)


@pytest.mark.integration  # a whole run end to end
def test_max_move_and_k_max_hold_in_a_federated_run(tiny_run_config, tmp_path):
    """Every matrix has 4 + 4 experts; K = 3, k_min = 2, k_max = 5, one unit per round."""
    config = tiny_run_config(
        num_rounds=5,
        k_min=2,
        k_max=5,
        eeqa_max_move=1,
        importance_score="taylor",
        output_scale="k0",
        output_dir=str(tmp_path / "limited"),
    )
    summary = run_federated(config)
    rows = _rows(tmp_path / "limited")
    tables = [np.array(r["quotas"]) for r in rows] + [np.array(rows[-1]["next_quotas"])]
    assert len(tables) == 6 and (tables[0] == 3).all()  # warm-up round: uniform K
    for row, used, following in zip(rows, tables, tables[1:], strict=False):
        np.testing.assert_array_equal(np.array(row["next_quotas"]), following)
        assert np.abs(following - used).max() <= 1
    for table in tables:
        assert table.min() >= 2 and table.max() <= 5
        assert table.sum() == 3 * 4  # the move cap never stops a spent budget from being spent
    assert any((a != b).any() for a, b in itertools.pairwise(tables)), "EEQA moved none"
    # taylor importance: shares of the sampled clients, each summing to 1, EMA of such shares.
    for row in rows:
        for client in row["client_importance"]:
            assert sum(client) == pytest.approx(1.0) and min(client) >= 0
        assert sum(row["importance"]) == pytest.approx(1.0)
    assert summary["final_state"]["quotas"] == rows[-1]["next_quotas"]
    saved = json.loads((tmp_path / "limited" / "config.json").read_text())["method_settings"]
    assert (saved["k_max"], saved["eeqa_max_move"], saved["output_scale"]) == (5, 1, "k0")


@pytest.mark.integration  # a whole run end to end
def test_without_a_move_cap_the_same_run_jumps_further(tiny_run_config, tmp_path):
    """The cap is what holds the steps at 1: the same run without it moves a quota by more."""
    config = tiny_run_config(
        num_rounds=3,
        k_min=1,
        importance_score="taylor",
        output_scale="k0",
        output_dir=str(tmp_path / "free"),
    )
    run_federated(config)
    rows = _rows(tmp_path / "free")
    moves = [np.abs(np.array(r["next_quotas"]) - np.array(r["quotas"])).max() for r in rows]
    assert max(moves) > 1
