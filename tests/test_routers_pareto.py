"""benchmarks/routers_pareto.py: means over seeds, bytes to FedIT's target, included folders and
methods that send nothing, on hand-written bench folders (so the table's arithmetic is checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pareto() -> ModuleType:
    path = ROOT / "benchmarks" / "routers_pareto.py"
    spec = importlib.util.spec_from_file_location("routers_pareto", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(folder: Path, label: str, losses_per_seed: dict[int, list[float]], per_round: int):
    folder.mkdir(parents=True)
    results = {
        "seeds": sorted(losses_per_seed),
        "methods": {label: {"chosen": {"learning_rate": 0.01}}},
    }
    (folder / "results.json").write_text(json.dumps(results))
    for seed, losses in losses_per_seed.items():
        run = folder / label / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"method_settings": {}}))
        (run / "summary.json").write_text(json.dumps({"initial_eval": {"eval_loss": losses[0]}}))
        rows = [
            {
                "round": r,
                "eval_loss": loss,
                "bytes_up": per_round // 2,
                "bytes_down": per_round // 2,
            }
            for r, loss in enumerate(losses[1:], start=1)
        ]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")


def test_table_means_targets_and_included_folders(pareto, tmp_path):
    task = tmp_path / "task"
    _bench(task / "fedit", "fedit", {0: [3.0, 1.0, 0.5], 1: [3.0, 1.2, 0.7]}, per_round=1000)
    _bench(task / "router", "smartfed_dense", {0: [2.0, 0.7, 0.6]}, per_round=10)
    _bench(task / "merge", "merge", {0: [2.4]}, per_round=0)  # no rounds: summary only
    _bench(tmp_path / "longer" / "router", "smartfed_dense", {0: [2.0, 0.8, 0.67, 0.6]}, 10)
    points = pareto.load_points(task) + pareto.load_points(tmp_path / "longer", prefix="longer/")
    by_name = {p["name"]: p for p in points}
    assert by_name["fedit"]["final_loss"] == pytest.approx(0.6)
    assert by_name["fedit"]["final_std"] == pytest.approx(0.1414, abs=1e-4)
    target = pareto.TARGET_FACTOR * 0.6  # 0.66
    assert pareto.bytes_to_target(by_name["fedit"], target) == 2000  # mean 0.6 at round 2
    assert pareto.bytes_to_target(by_name["router"], target) == 20
    assert pareto.bytes_to_target(by_name["longer/router"], target) == 30  # round 3 (0.67 > 0.66)
    assert pareto.bytes_to_target(by_name["merge"], target) is None
    table = pareto.write_outputs("task", points, tmp_path)
    assert "| router | 0.01 | 1 | 0.600 |" in table and "| 100.0 |" in table  # 2000 / 20
    assert "| merge |" in table and (tmp_path / "pareto.png").is_file()
