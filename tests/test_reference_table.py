"""benchmarks/reference_table.py: means and spreads over seeds, the tie verdict, the three loss
targets with rounds and bytes to each and the ratios against FedIT, a bench still running, a
missing merge folder and an empty results folder, on hand-written bench folders. Every expected
figure is computed here from the fake inputs, independently of the script."""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Per entry: seed -> eval loss per round, round 0 first (the evaluation before training).
FEDIT = {0: [3.0, 1.2, 0.60, 0.50], 1: [3.0, 1.4, 0.70, 0.56], 2: [3.0, 1.0, 0.65, 0.53]}
ROUTER = {0: [2.4, 1.0, 0.62, 0.55], 1: [2.5, 0.9, 0.60, 0.52], 2: [2.3, 1.1, 0.52, 0.58]}
MERGE = {0: [2.2], 1: [2.2], 2: [2.2]}  # trains nothing: its one evaluation
UP_DOWN = {"fedit": (600, 400), "smartfed": (6, 4), "merge": (0, 0)}  # bytes per round
GRID = [0.0005, 0.002, 0.01]
VALIDATION = [0.7, 0.5, 0.9]  # 2e-3 chosen


@pytest.fixture(scope="module")
def table() -> ModuleType:
    # As when the script runs: its folder on sys.path, so that `import routers_pareto` works.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("reference_table")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _run(run: Path, losses: list[float], up: int, down: int, lr: float | None = None) -> None:
    run.mkdir(parents=True)
    rows = [
        {"round": r, "eval_loss": loss, "bytes_up": up, "bytes_down": down}
        for r, loss in enumerate(losses[1:], start=1)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    rounds = len(losses) - 1
    summary = {
        "rounds": rounds,
        "bytes_up": up * rounds,
        "bytes_down": down * rounds,
        "wall_s": 10.0 * (rounds + 1),
        "initial_eval": {"eval_loss": losses[0]},
        "final_eval": {"round": rounds, "eval_loss": losses[-1]},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"method_settings": {"learning_rate": lr}}))


def _bench(task: Path, label: str, per_seed: dict[int, list[float]], tuned: bool = True) -> None:
    folder = task / label
    folder.mkdir(parents=True)
    grid = [
        {"point": {"learning_rate": lr}, "validation_loss": loss, "run_dir": f"tune/{label}/x"}
        for lr, loss in zip(GRID, VALIDATION, strict=True)
    ]
    method = {
        "method": label,
        "tuned": tuned,
        "grid": grid if tuned else [],
        "chosen": {"learning_rate": GRID[1]} if tuned else None,
    }
    results = {"seeds": sorted(per_seed), "methods": {label: method}}
    (folder / "results.json").write_text(json.dumps(results))
    for seed, losses in per_seed.items():
        _run(folder / label / f"seed{seed}", losses, *UP_DOWN[label], GRID[1] if tuned else None)


def _running_bench(task: Path) -> None:
    """mole, mid-run: no results.json, one grid point and seed 1 unfinished."""
    folder = task / "mole"
    folder.mkdir(parents=True)
    bench = {
        "entries": [{"label": "mole", "method": "mole"}],
        "sweep": [{"setting": "learning_rate", "values": [0.01, 0.05, 0.2]}],
        "seeds": [0, 1, 2],
    }
    (folder / "bench.json").write_text(json.dumps(bench))
    for lr, loss in ((0.01, 1.9), (0.05, 1.7)):
        _run(folder / "tune" / "mole" / f"learning_rate={lr}", [2.0, loss], 1, 1, lr)
    (folder / "tune" / "mole" / "learning_rate=0.2").mkdir()
    _run(folder / "mole" / "seed0", [2.0, 1.8], 1, 1, 0.05)
    _run(folder / "mole" / "seed1", [2.0, 1.5], 1, 1, 0.05)
    (folder / "mole" / "seed1" / "summary.json").unlink()  # still running


def _task(root: Path, merge: bool = True) -> Path:
    task = root / "task"
    _bench(task, "fedit", FEDIT)
    _bench(task, "smartfed", ROUTER)
    if merge:
        _bench(task, "merge", MERGE, tuned=False)
    _running_bench(task)
    return task


def _mean_curve(per_seed: dict[int, list[float]]) -> list[float]:
    return [statistics.mean(losses[r] for losses in per_seed.values()) for r in range(4)]


def _to_target(per_seed: dict[int, list[float]], per_round: int, target: float):
    """(round, bytes) of the first round whose mean over seeds is at or below target."""
    curve = _mean_curve(per_seed) if len(next(iter(per_seed.values()))) > 1 else [2.2]
    for rnd, loss in enumerate(curve):
        if loss <= target + 1e-12:
            return rnd, rnd * per_round
    return None


def test_numbers_targets_and_outputs(table, tmp_path):
    task = _task(tmp_path)
    text = table.write_outputs("task", task, "cmd task")
    summary = json.loads((task / "summary.json").read_text())
    entries = summary["entries"]
    assert (task / "reference.png").stat().st_size > 0
    assert (task / "README.md").read_text() == text and text.startswith("# Reference results")
    assert "Generated by `cmd task`" in text

    finals = {name: [s[-1] for s in seeds.values()] for name, seeds in
              (("fedit", FEDIT), ("smartfed", ROUTER), ("merge", MERGE))}  # fmt: skip
    for name, values in finals.items():
        loss = entries[name]["final_loss"]
        assert loss["mean"] == pytest.approx(statistics.mean(values))
        assert loss["std"] == pytest.approx(statistics.stdev(values))
        assert loss["n"] == 3
    fedit_mean, fedit_std = statistics.mean(finals["fedit"]), statistics.stdev(finals["fedit"])
    router_mean, router_std = (
        statistics.mean(finals["smartfed"]),
        statistics.stdev(finals["smartfed"]),
    )
    # The fake router sits within the two spreads of FedIT (a tie); merge far above (worse).
    assert abs(router_mean - fedit_mean) <= router_std + fedit_std
    assert entries["smartfed"]["vs_fedit"] == "tie"
    assert entries["merge"]["vs_fedit"] == "worse" and entries["fedit"]["vs_fedit"] == "reference"
    assert entries["fedit"]["bytes_per_round"] == sum(UP_DOWN["fedit"])
    assert entries["smartfed"]["wall_s"] == pytest.approx(40.0)

    merge_mean = statistics.mean(finals["merge"])
    targets = {
        "T_merge": merge_mean,
        "T_half": merge_mean + (fedit_mean - merge_mean) / 2,
        "T_fedit": 1.1 * fedit_mean,
    }
    assert summary["targets"] == pytest.approx(targets)
    assert summary["missing_targets"] == []
    inputs = {"fedit": FEDIT, "smartfed": ROUTER, "merge": MERGE}
    for name, target in targets.items():
        fedit = _to_target(FEDIT, sum(UP_DOWN["fedit"]), target)
        for entry, per_seed in inputs.items():
            got = entries[entry]["to_target"][name]
            expected = _to_target(per_seed, sum(UP_DOWN[entry]), target)
            assert (got["round"], got["bytes"]) == (expected or (None, None)), (entry, name)
            if expected is None or fedit is None:
                assert got["bytes_ratio_vs_fedit"] is None
            elif expected[1] == 0:  # there at round 0: nothing sent
                assert got["bytes_ratio_vs_fedit"] == got["rounds_ratio_vs_fedit"] == "inf"
            else:
                assert got["bytes_ratio_vs_fedit"] == pytest.approx(fedit[1] / expected[1])
                assert got["rounds_ratio_vs_fedit"] == pytest.approx(fedit[0] / expected[0])
    # The fake inputs exercise each case: router ahead of FedIT on T_fedit in rounds, merge at
    # round 0 on T_merge, merge never at T_half.
    assert entries["smartfed"]["to_target"]["T_fedit"]["rounds_ratio_vs_fedit"] > 1
    assert entries["merge"]["to_target"]["T_merge"]["round"] == 0
    assert entries["merge"]["to_target"]["T_half"]["round"] is None

    # A bench still running: grid from its finished tuning runs, chosen rate from the seed
    # runs' config, unfinished seed skipped.
    mole = entries["mole"]
    assert mole["final_loss"]["n"] == 1 and mole["seeds"] == [0]
    assert mole["final_loss"]["mean"] == pytest.approx(1.8) and mole["vs_fedit"] is None
    assert "| mole | mole | 5e-2 | 1e-2: 1.900, **5e-2: 1.700**, 2e-1: … | 1/3 |" in text
    assert (
        "| smartfed | smartfed | 2e-3 | 5e-4: 0.700, **2e-3: 0.500**, 1e-2: 0.900 | 3/3 |" in text
    )
    assert "| merge | merge | – | untuned | 3/3 |" in text
    rows = [line.split(" | ")[0] for line in text.split("## Rounds")[0].splitlines()]
    order = [row.removeprefix("| ") for row in rows if row.removeprefix("| ") in entries]
    assert order == sorted(entries, key=lambda n: entries[n]["final_loss"]["mean"])
    assert "transfer loss" not in text


def test_transfer_loss_column(table, tmp_path):
    task = _task(tmp_path)
    values = [1.1, 1.3]
    for seed, value in enumerate(values):
        path = task / "smartfed" / "smartfed" / f"seed{seed}" / "transfer_loss.json"
        path.write_text(json.dumps({"value": value, "dataset": "gsm8k", "split": "test"}))
    text = table.write_outputs("task", task, "cmd")
    assert "transfer loss (gsm8k/test)" in text
    cell = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert next(line for line in text.splitlines() if line.startswith("| smartfed |")).endswith(
        f"| {cell} |"
    )


def test_missing_merge_degrades(table, tmp_path):
    task = _task(tmp_path, merge=False)
    text = table.write_outputs("task", task, "cmd")
    summary = json.loads((task / "summary.json").read_text())
    assert summary["targets"]["T_merge"] is None and summary["targets"]["T_half"] is None
    assert summary["targets"]["T_fedit"] == pytest.approx(1.1 * statistics.mean(
        s[-1] for s in FEDIT.values()))  # fmt: skip
    assert any("T_half" in line and "`merge`" in line for line in summary["missing_targets"])
    assert "### T_fedit" in text and "### T_merge" not in text
    assert (task / "reference.png").is_file()


def test_empty_or_missing_folder_is_one_line(table, tmp_path, monkeypatch):
    (tmp_path / "task").mkdir()
    for results in (tmp_path, tmp_path / "nowhere"):
        argv = ["reference_table.py", "task", "--results", str(results)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as error:
            table.main()
        assert isinstance(error.value.code, str) and "\n" not in error.value.code
        assert str(results / "task") in error.value.code
