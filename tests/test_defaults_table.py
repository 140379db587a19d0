"""benchmarks/defaults_table.py: the defaults re-decided from dev-slice losses only (seed 0 picks
the finalists within the bytes rule, their 3-seed means decide under the tie rule)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .benchmark_scripts import import_benchmark

defaults_table = import_benchmark("defaults_table")
TASKS = defaults_table.TASKS


def _bench(bench: Path, label: str, dev: float, per_round: int, test: float | None = None,
           rate: float = 0.05) -> None:  # fmt: skip
    """A bench folder whose tuning chose ``rate`` with dev loss ``dev`` (one more, worse point),
    and a seed-0 run with target test loss ``test`` when given."""
    grid = []
    for point_rate, loss in ((rate, dev), (rate * 4, dev + 1.0)):
        run_dir = f"tune/{label}/learning_rate={point_rate}"
        (bench / run_dir).mkdir(parents=True)
        row = {"round": 1, "bytes_up": per_round // 2, "bytes_down": per_round // 2}
        (bench / run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
        (bench / run_dir / "summary.json").write_text(json.dumps({"method": "smartfed"}))
        grid.append({"point": {"learning_rate": point_rate}, "run_dir": run_dir,
                     "target_dev_loss": loss})  # fmt: skip
    method = {"chosen": {"learning_rate": rate}, "grid": grid}
    (bench / "results.json").write_text(json.dumps({"methods": {label: method}}))
    if test is not None:
        run = bench / label / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"round": 1}) + "\n")
        summary = {"method": "smartfed", "initial_eval": {"target_loss": 2.0},
                   "final_target": {"round": 1, "target_loss": test}}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))


def _grid(root: Path, dev: dict[str, float], per_round: int = 1000) -> None:
    """Seed 0 of every cell on both tasks (dev loss per entry, the defaults 1.0 unless given),
    and FedIT r32 sending 60,000 bytes a round (cap 2,000)."""
    for task in TASKS:
        for entry in defaults_table.CELLS.values():
            _bench(root / task / entry, "smartfed", dev.get(entry, 1.0), per_round, test=0.5)
        fedit = root / task / "fedit" / "fedit" / "seed0"
        fedit.mkdir(parents=True)
        (fedit / "metrics.jsonl").write_text(
            json.dumps({"round": 1, "bytes_up": 30_000, "bytes_down": 30_000}) + "\n"
        )
        (fedit / "summary.json").write_text(json.dumps({"method": "fedit"}))


def _finalist_seeds(root: Path, entry: str, devs: dict[str, tuple[float, float]]) -> None:
    for task in TASKS:
        for seed, dev in zip(defaults_table.FINALIST_SEEDS, devs[task], strict=True):
            _bench(root / "finalists" / f"seed{seed}" / task / entry, "smartfed", dev, 1000)


def test_finalists_need_the_whole_seed0_grid(tmp_path: Path) -> None:
    _bench(tmp_path / "cn_math" / "smartfed", "smartfed", 1.0, 1000, test=0.5)
    with pytest.raises(SystemExit, match="seed 0 not finished for cn_math/smartfed_k32"):
        defaults_table.finalists(tmp_path)
    assert defaults_table.table(tmp_path)["decision"] == "Not decided yet: seed 0 is unfinished."


def test_finalists_are_the_defaults_and_the_two_best_within_the_bytes_rule(tmp_path) -> None:
    _grid(tmp_path, {"smartfed_diagonal": 0.7, "smartfed_k32": 0.8, "smartfed_router_x": 0.9})
    assert defaults_table.finalists(tmp_path) == ["smartfed", "smartfed_diagonal", "smartfed_k32"]
    # A cell over the cap (60,000 / 30 = 2,000 bytes a round) is no finalist, however good.
    shutil.rmtree(tmp_path / "math_code" / "smartfed_diagonal")
    _bench(tmp_path / "math_code" / "smartfed_diagonal", "smartfed", 0.7, 2100, test=0.5)
    assert defaults_table.finalists(tmp_path) == ["smartfed", "smartfed_k32", "smartfed_router_x"]


def test_a_finalist_replaces_the_defaults_only_when_better_on_both_tasks(tmp_path) -> None:
    _grid(tmp_path, {"smartfed_diagonal": 0.7, "smartfed_k32": 0.8})
    assert "Not decided yet" in defaults_table.table(tmp_path)["decision"]
    _finalist_seeds(tmp_path, "smartfed", {t: (1.01, 0.99) for t in TASKS})
    # diagonal: better on cn_math, a tie on math_code; k32: better on both.
    _finalist_seeds(tmp_path, "smartfed_diagonal", {"cn_math": (0.71, 0.69),
                                                     "math_code": (0.2, 1.8)})  # fmt: skip
    _finalist_seeds(tmp_path, "smartfed_k32", {t: (0.81, 0.79) for t in TASKS})
    data = defaults_table.table(tmp_path)
    assert data["decision"] == "smartfed_k32 replaces the defaults (mean dev loss 0.800x theirs)."
    assert data["cells"]["cn_math"]["smartfed_k32"]["dev_seeds"]["mean"] == pytest.approx(0.8)
    text = defaults_table.markdown(data)
    row = "| diag_lowrank (defaults) | K = 32 | smartfed_k32 | learning_rate=0.05 | 0.8000 |"
    assert row in text
    assert "0.8000 ± 0.0100 (n=3)" in text and "Finalists: smartfed, smartfed_diagonal" in text


def test_the_defaults_stay_on_a_tie(tmp_path: Path) -> None:
    _grid(tmp_path, {"smartfed_diagonal": 0.7, "smartfed_k32": 0.8})
    _finalist_seeds(tmp_path, "smartfed", {t: (1.01, 0.99) for t in TASKS})
    for entry in ("smartfed_diagonal", "smartfed_k32"):
        _finalist_seeds(tmp_path, entry, {t: (1.25, 0.95) for t in TASKS})  # noisy: ties
    assert defaults_table.table(tmp_path)["decision"].startswith("The defaults stay")


def test_the_test_slice_never_chooses(tmp_path: Path) -> None:
    """Swapping every cell's seed-0 test loss changes no finalist and no decision."""
    _grid(tmp_path, {"smartfed_diagonal": 0.7, "smartfed_k32": 0.8})
    before = defaults_table.finalists(tmp_path)
    for summary in tmp_path.glob("*/*/smartfed/seed0/summary.json"):
        data = json.loads(summary.read_text())
        data["final_target"]["target_loss"] = 100.0 if "diagonal" in str(summary) else 0.01
        summary.write_text(json.dumps(data))
    assert defaults_table.finalists(tmp_path) == before


def test_finalists_lines_for_target_all(tmp_path: Path, capsys, monkeypatch) -> None:
    _grid(tmp_path, {"smartfed_diagonal": 0.7, "smartfed_k32": 0.8})
    monkeypatch.setattr("sys.argv", ["defaults_table.py", "--results", str(tmp_path),
                                     "--finalists"])  # fmt: skip
    defaults_table.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["cn_math smartfed 0.05", "math_code smartfed 0.05"] and len(lines) == 6


def test_a_rate_at_an_end_of_its_grid_is_marked(tmp_path: Path) -> None:
    _grid(tmp_path, {"smartfed_diagonal": 0.7})
    results_path = tmp_path / "cn_math" / "smartfed_diagonal" / "results.json"
    results = json.loads(results_path.read_text())
    method = results["methods"]["smartfed"]
    method["grid"].insert(0, {"point": {"learning_rate": 0.01}, "target_dev_loss": 2.0})
    results_path.write_text(json.dumps(results))  # 1e-2, 5e-2 (chosen), 2e-1: inside
    text = defaults_table.markdown(defaults_table.table(tmp_path))
    assert "| smartfed_diagonal | learning_rate=0.05 | 0.7000 |" in text
    method["grid"][0]["point"]["learning_rate"] = 0.5  # now 5e-2 is the lowest of three
    results_path.write_text(json.dumps(results))
    text = defaults_table.markdown(defaults_table.table(tmp_path))
    assert "| smartfed_diagonal | learning_rate=0.05 (lowest of its grid) | 0.7000 |" in text
