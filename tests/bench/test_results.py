"""results.json arithmetic on hand-made runs: ratios, rounds to FedIT's loss, the table."""

from __future__ import annotations

import pytest

from smartfed.bench.results import bench_results, results_markdown, rounds_to_reach


def _run(method, losses, bytes_per_round, step, energy, initial=3.0, params=10):
    rows = [
        {
            "round": i + 1,
            "eval_loss": loss,
            "bytes_up": bytes_per_round,
            "bytes_down": bytes_per_round,
        }
        for i, loss in enumerate(losses)
    ]
    final = (
        {"round": len(rows), "eval_loss": losses[-1]}
        if rows
        else {"round": 0, "eval_loss": initial}
    )
    return {
        "summary": {
            "method": method,
            "initial_eval": {"eval_loss": initial},
            "final_eval": final,
            "bytes_up": bytes_per_round * len(rows),
            "bytes_down": bytes_per_round * len(rows),
            "rounds": len(rows),
            "mean_step_time_s": step,
            "energy_kwh": energy,
            "trainable_parameters": params,
            "final_metric": {"benchmark": "b", "metric": "acc", "value": 0.5, "correct": 1, "n": 2},
        },
        "rows": rows,
    }


def test_ratios_and_rounds_against_fedit():
    runs = {
        "fedit": _run("fedit", [2.5, 2.2, 2.0], 1000, 2.0, 0.02),
        "smartfed": _run("smartfed", [2.4, 1.9, 1.8], 100, 1.0, 0.01),
        "merge": _run("merge", [], 0, None, 0.001, initial=2.1),
        "slow": _run("lorahub", [2.9, 2.8, 2.7], 10, 0.5, 0.01),
    }
    results = bench_results("t", "smartfed bench", runs, {"seed": 0})
    methods = results["methods"]
    assert set(methods["fedit"]) >= {
        "final_eval_loss", "metric", "bytes_up", "bytes_down", "comm_ratio_vs_fedit",
        "rounds_to_fedit_loss", "step_time_s", "energy_kwh", "trainable_params",
    }  # fmt: skip
    assert methods["fedit"]["comm_ratio_vs_fedit"] == 1.0
    assert methods["fedit"]["rounds_to_fedit_loss"] == 3
    assert methods["smartfed"]["comm_ratio_vs_fedit"] == pytest.approx(0.1)
    assert methods["smartfed"]["rounds_to_fedit_loss"] == 2
    assert methods["smartfed"]["rounds_ratio_vs_fedit"] == pytest.approx(2 / 3)
    assert methods["smartfed"]["step_time_ratio_vs_fedit"] == pytest.approx(0.5)
    assert methods["smartfed"]["energy_ratio_vs_fedit"] == pytest.approx(0.5)
    assert methods["merge"]["comm_ratio_vs_fedit"] == 0.0
    assert methods["merge"]["rounds_to_fedit_loss"] is None  # 2.1 never reaches 2.0
    assert methods["slow"]["rounds_to_fedit_loss"] is None
    assert methods["smartfed"]["metric"] == 0.5
    table = results_markdown(results)
    assert "| smartfed | 1.8000 | 1/2 (b) |" in table
    assert "never" in table


def test_starting_model_can_already_reach_the_target():
    run = _run("merge", [], 0, None, 0.0, initial=1.5)
    assert rounds_to_reach(run, 2.0) == 0
    assert rounds_to_reach(run, None) is None


def test_without_fedit_there_are_no_ratios():
    results = bench_results("t", "c", {"smartfed": _run("smartfed", [2.0], 10, 1.0, 0.1)}, {})
    assert results["reference"] is None
    assert results["methods"]["smartfed"]["comm_ratio_vs_fedit"] is None
