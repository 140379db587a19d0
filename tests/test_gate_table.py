"""benchmarks/gate_table.py: seed-0 rows from bench folders, and the gate's question answered
against the knowledge-free entries that send at least SmartFed's bytes a round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .benchmark_scripts import import_benchmark

gate_table = import_benchmark("gate_table")


def _entry(
    root: Path, task: str, entry: str, method: str, target: float, per_round: int, **settings
) -> None:
    bench = root / task / entry
    run = bench / entry / "seed0"
    run.mkdir(parents=True)
    (bench / "bench.json").write_text(json.dumps({"entries": [{"label": entry}]}))
    (bench / "results.json").write_text(
        json.dumps({"methods": {entry: {"chosen": {"learning_rate": 0.01}}}})
    )
    losses = {1: 2.0 - (2.0 - target) / 2, 2: target}
    rows = [{"round": r, "bytes_up": per_round // 2, "bytes_down": per_round // 2,
             "target_loss": losses[r]} for r in (1, 2)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "method": method,
        "initial_eval": {"target_loss": 2.0, "eval_loss": 2.5},
        "final_target": {"round": 2, "target_loss": target},
        "final_eval": {"round": 2, "eval_loss": 1.0},
        "bytes_up": per_round,
        "bytes_down": per_round,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    method_settings = {"learning_rate": 0.01, "output_scale": "k", **settings}
    config = {"method": method, "seed": 0, "output_dir": str(run), "lora_pool": "a,b",
              "method_settings": method_settings}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))


def test_rows_sorted_by_target_loss_and_the_gate(tmp_path: Path) -> None:
    _entry(tmp_path, "math_code", "smartfed", "smartfed", 0.70, 1000)
    _entry(tmp_path, "math_code", "fedit", "fedit", 0.80, 50_000)
    _entry(tmp_path, "math_code", "fedit_r1", "fedit", 0.60, 900)  # cheaper: not a rival
    table = gate_table.task_table("math_code", tmp_path)
    assert [r["entry"] for r in table["rows"]] == ["fedit_r1", "smartfed", "fedit"]
    assert table["rows"][1]["bytes_per_round"] == 1000
    assert table["gate"] == "SmartFed's defaults are lower than every one of them (fedit)."

    _entry(tmp_path, "math_code", "fed_sb_r26", "fed_sb", 0.65, 1200)
    table = gate_table.task_table("math_code", tmp_path)
    assert table["gate"].startswith("SmartFed's defaults are not lower than fed_sb_r26")
    text = gate_table.markdown([table])
    assert "| smartfed | learning_rate=0.01 | 0.7000 (2.0000) | 1.0000 |" in text
    # FedIT gains 1.2 (2.0 -> 0.8): T50 = 1.4, T90 = 0.92. SmartFed (2.0 -> 1.35 -> 0.7)
    # reaches T50 in round 1 after 1000 bytes and T90 in round 2 after 2000.
    assert table["targets"] == {"T50": 1.4, "T90": pytest.approx(0.92)}
    ours = next(r for r in table["rows"] if r["entry"] == "smartfed")
    assert ours["to_target"] == {"T50": (1, 1000), "T90": (2, 2000)}


def test_unfinished_entries_are_pending(tmp_path: Path) -> None:
    bench = tmp_path / "cn_math" / "fedit"
    bench.mkdir(parents=True)
    (bench / "bench.json").write_text(json.dumps({"entries": [{"label": "fedit"}]}))
    table = gate_table.task_table("cn_math", tmp_path)
    assert table["pending"] == ["fedit"] and table["rows"] == []
    assert table["gate"] == "SmartFed's defaults have not finished yet."


def test_ablation_rows_name_what_changed_against_the_defaults(tmp_path: Path) -> None:
    _entry(tmp_path, "math_code", "smartfed", "smartfed", 0.70, 1000)
    _entry(tmp_path, "math_code", "smartfed_scale1", "smartfed", 0.60, 1000, output_scale="one",
           learning_rate=0.2)  # fmt: skip
    _entry(tmp_path, "math_code", "fedit", "fedit", 0.80, 50_000)  # not SmartFed: no row
    table = gate_table.task_table("math_code", tmp_path)
    # the rate is the tuning's choice, not the ablation: only output_scale is named
    assert table["ablation"] == [{"entry": "smartfed_scale1", "changed": {"output_scale": "one"},
                                  "delta": pytest.approx(-0.10), "initial_delta": 0.0}]  # fmt: skip
    assert "| smartfed_scale1 | output_scale=one | -0.1000 | +0.0000 |" in gate_table.markdown(
        [table]
    )
    assert all("settings" not in row for row in table["rows"])


def test_accuracy_columns_appear_once_a_run_is_scored(tmp_path: Path) -> None:
    _entry(tmp_path, "math_code", "smartfed", "smartfed", 0.70, 1000)
    _entry(tmp_path, "math_code", "fedit", "fedit", 0.80, 50_000)
    assert "accuracy" not in gate_table.markdown([gate_table.task_table("math_code", tmp_path)])
    run = tmp_path / "math_code" / "smartfed" / "smartfed" / "seed0"
    (run / "accuracy_target.json").write_text(json.dumps({"correct": 2, "n": 128}))
    text = gate_table.markdown([gate_table.task_table("math_code", tmp_path)])
    assert "| target accuracy (greedy) |" in text and "in-distribution accuracy" not in text
    row = next(line for line in text.splitlines() if line.startswith("| smartfed |"))
    assert row.endswith("| 2/128 (1.6%; 95 % 0.4%–5.5%) |")
    assert next(line for line in text.splitlines() if line.startswith("| fedit |")).endswith(
        "| – |"
    )


def test_a_choice_at_an_end_of_its_grid_is_marked(tmp_path: Path) -> None:
    _entry(tmp_path, "math_code", "smartfed", "smartfed", 0.70, 1000)
    _entry(tmp_path, "math_code", "fedit", "fedit", 0.80, 50_000)
    grid = [{"point": {"learning_rate": lr}} for lr in (0.002, 0.01, 0.05)]
    results = {"methods": {"smartfed": {"chosen": {"learning_rate": 0.05}, "grid": grid}}}
    (tmp_path / "math_code" / "smartfed" / "results.json").write_text(json.dumps(results))
    table = gate_table.task_table("math_code", tmp_path)
    text = gate_table.markdown([table])
    assert "| smartfed | learning_rate=0.05 (highest of its grid) | 0.7000" in text
    assert "| fedit | learning_rate=0.01 | 0.8000" in text  # no grid recorded: no mark


@pytest.mark.parametrize(
    ("change", "shown"), [(-1e-7, "+0.0000"), (0.0, "+0.0000"), (-0.1963, "-0.1963"), (None, "–")]
)
def test_a_change_that_rounds_to_zero_has_no_minus_sign(change: float | None, shown: str) -> None:
    assert gate_table._signed(change) == shown
