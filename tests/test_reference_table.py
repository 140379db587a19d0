"""benchmarks/reference_table.py: means and spreads over seeds, the tie verdict, the three loss
targets with rounds and bytes to each and the ratios against FedIT, a bench still running, a
missing merge folder and an empty results folder, on hand-written bench folders; and the same
on the target set's loss (``--metric target_loss``: T50 / T90 on FedIT's target curve). Every
expected figure is computed here from the fake inputs, independently of the script."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmark_scripts import import_benchmark

ROOT = Path(__file__).resolve().parents[1]

# Per entry: seed -> eval loss per round, round 0 first (the evaluation before training).
FEDIT = {0: [3.0, 1.2, 0.60, 0.50], 1: [3.0, 1.4, 0.70, 0.56], 2: [3.0, 1.0, 0.65, 0.53]}
ROUTER = {0: [2.4, 1.0, 0.62, 0.55], 1: [2.5, 0.9, 0.60, 0.52], 2: [2.3, 1.1, 0.52, 0.58]}
MERGE = {0: [2.2], 1: [2.2], 2: [2.2]}  # trains nothing: its one evaluation
UP_DOWN = {"fedit": (600, 400), "smartfed": (6, 4), "merge": (0, 0)}  # bytes per round
GRID = [0.0005, 0.002, 0.01]
VALIDATION = [0.7, 0.5, 0.9]  # 2e-3 chosen
# The target re-run: seed -> target loss per round (round 0 first), and the grid's final target
# dev losses (2e-3 chosen there too).
FEDIT_T = {0: [2.0, 1.2, 0.90, 0.80], 1: [2.0, 1.4, 1.00, 0.86], 2: [2.0, 1.0, 0.95, 0.83]}
ROUTER_T = {0: [2.1, 1.3, 0.90, 0.85], 1: [2.1, 1.5, 1.00, 0.90], 2: [2.1, 1.35, 0.80, 0.84]}
MERGE_T = {0: [1.9], 1: [1.9], 2: [1.9]}
TARGET_DEV = [0.8, 0.6, 1.1]
TARGETS = {"fedit": FEDIT_T, "smartfed": ROUTER_T, "merge": MERGE_T}


@pytest.fixture(scope="module")
def table() -> ModuleType:
    return import_benchmark("reference_table")


def _run(
    run: Path,
    losses: list[float],
    up: int,
    down: int,
    lr: float | None = None,
    target: list[float] | None = None,
) -> None:
    """One finished run; ``target``: its target loss per round (round 0 first), scored every
    round as a test run does."""
    run.mkdir(parents=True)
    rows = [
        {"round": r, "eval_loss": loss, "bytes_up": up, "bytes_down": down}
        for r, loss in enumerate(losses[1:], start=1)
    ]
    for row, loss in zip(rows, (target or [])[1:], strict=False):
        row["target_loss"] = loss
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
    if target:
        summary["initial_eval"]["target_loss"] = target[0]
        if rounds:  # merge trains nothing: no final evaluation of either loss
            summary["final_target"] = {"round": rounds, "target_loss": target[-1]}
        summary["target"] = {"data": "mgsm_zh_math23k", "split": "test", "samples": 128}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.json").write_text(json.dumps({"method_settings": {"learning_rate": lr}}))


def _bench(
    task: Path,
    label: str,
    per_seed: dict[int, list[float]],
    tuned: bool = True,
    on_target: bool = False,
) -> None:
    """A finished bench; ``on_target``: the target re-run's (--select_on target, every run
    scoring the target set too)."""
    folder = task / label
    folder.mkdir(parents=True)
    grid = [
        {"point": {"learning_rate": lr}, "validation_loss": loss, "target_dev_loss": dev,
         "run_dir": f"tune/{label}/x"}
        for lr, loss, dev in zip(GRID, VALIDATION, TARGET_DEV, strict=True)
    ]  # fmt: skip
    method = {
        "method": label,
        "tuned": tuned,
        "grid": grid if tuned else [],
        "chosen": {"learning_rate": GRID[1]} if tuned else None,
    }
    results = {"seeds": sorted(per_seed), "methods": {label: method}}
    if on_target:
        results["select_on"] = "target" if tuned else None
    (folder / "results.json").write_text(json.dumps(results))
    for seed, losses in per_seed.items():
        target = TARGETS[label][seed] if on_target else None
        lr = GRID[1] if tuned else None
        _run(folder / label / f"seed{seed}", losses, *UP_DOWN[label], lr, target)


def _running_bench(task: Path, on_target: bool = False) -> None:
    """mole, mid-run: no results.json, one grid point and seed 1 unfinished."""
    folder = task / "mole"
    folder.mkdir(parents=True)
    bench = {
        "entries": [{"label": "mole", "method": "mole"}],
        "sweep": [{"setting": "learning_rate", "values": [0.01, 0.05, 0.2]}],
        "seeds": [0, 1, 2],
    }
    if on_target:
        bench["select_on"] = "target"
    (folder / "bench.json").write_text(json.dumps(bench))
    # (lr, final validation loss, final target dev loss)
    for lr, loss, dev in ((0.01, 1.9, 1.65), (0.05, 1.7, 1.55)):
        target = [2.0, dev] if on_target else None
        _run(folder / "tune" / "mole" / f"learning_rate={lr}", [2.0, loss], 1, 1, lr, target)
    (folder / "tune" / "mole" / "learning_rate=0.2").mkdir()
    _run(folder / "mole" / "seed0", [2.0, 1.8], 1, 1, 0.05, MOLE_T if on_target else None)
    _run(folder / "mole" / "seed1", [2.0, 1.5], 1, 1, 0.05, [2.0, 1.1] if on_target else None)
    (folder / "mole" / "seed1" / "summary.json").unlink()  # still running


MOLE_T = [2.0, 1.3]  # mole's finished seed on the target set


def _task(root: Path, merge: bool = True, on_target: bool = False) -> Path:
    task = root / "task"
    _bench(task, "fedit", FEDIT, on_target=on_target)
    _bench(task, "smartfed", ROUTER, on_target=on_target)
    if merge:
        _bench(task, "merge", MERGE, tuned=False, on_target=on_target)
    _running_bench(task, on_target)
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
    assert "metric" not in summary  # the reference pages' summary.json predates --metric
    assert not (task / "final_vs_bytes.png").exists()

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
                assert got["fedit_bytes_over_entry"] is None
            elif expected[1] == 0:  # there at round 0: nothing sent
                assert got["fedit_bytes_over_entry"] == got["fedit_rounds_over_entry"] == "inf"
            else:
                assert got["fedit_bytes_over_entry"] == pytest.approx(fedit[1] / expected[1])
                assert got["fedit_rounds_over_entry"] == pytest.approx(fedit[0] / expected[0])
    # The fake inputs exercise each case: router ahead of FedIT on T_fedit in rounds, merge at
    # round 0 on T_merge, merge never at T_half.
    assert entries["smartfed"]["to_target"]["T_fedit"]["fedit_rounds_over_entry"] > 1
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


# --------------------------------------------------------------------------- --metric target_loss


def _mean_points(per_seed: dict[int, list[float]], per_round: int) -> list[tuple]:
    """(round, loss averaged over seeds, cumulative bytes) of an entry's target curve."""
    rounds = len(next(iter(per_seed.values())))
    return [
        (r, statistics.mean(losses[r] for losses in per_seed.values()), r * per_round)
        for r in range(rounds)
    ]


def _first(points: list[tuple], target: float) -> tuple[int, int] | None:
    return next(((r, sent) for r, loss, sent in points if loss <= target), None)


def _verdict(a: list[float], b: list[float]) -> str:
    difference = statistics.mean(a) - statistics.mean(b)
    if abs(difference) <= statistics.stdev(a) + statistics.stdev(b):
        return "tie"
    return "better" if difference < 0 else "worse"


def test_target_metric(table, tmp_path):
    task = _task(tmp_path, on_target=True)
    text = table.write_outputs("task", task, "cmd task --metric target_loss", metric="target_loss")
    summary = json.loads((task / "summary.json").read_text())
    entries = summary["entries"]
    assert summary["metric"] == "target_loss"
    assert (task / "README.md").read_text() == text and text.startswith("# Target results: task")
    assert (task / "reference.png").stat().st_size > 0
    assert (task / "final_vs_bytes.png").stat().st_size > 0
    assert "(final_vs_bytes.png)" in text
    assert "Target set: mgsm_zh_math23k, test slice, 128 items." in text

    # Headline: the final target test loss over seeds (merge: its round-0 target loss, as it
    # trains nothing), the in-distribution test loss beside it, the verdict on the target loss.
    in_distribution = {"fedit": FEDIT, "smartfed": ROUTER, "merge": MERGE}
    finals = {name: [s[-1] for s in seeds.values()] for name, seeds in TARGETS.items()}
    for name, values in finals.items():
        loss = entries[name]["final_loss"]
        assert loss["mean"] == pytest.approx(statistics.mean(values))
        assert loss["std"] == pytest.approx(statistics.stdev(values))
        assert loss["n"] == 3
        evals = [s[-1] for s in in_distribution[name].values()]
        assert entries[name]["in_distribution_loss"]["mean"] == pytest.approx(
            statistics.mean(evals)
        )
        assert entries[name]["select_on"] == ("target" if name != "merge" else None)
    assert entries["fedit"]["vs_fedit"] == "reference"
    for name in ("smartfed", "merge"):
        assert entries[name]["vs_fedit"] == _verdict(finals[name], finals["fedit"])
    assert entries["smartfed"]["vs_fedit"] == "tie" and entries["merge"]["vs_fedit"] == "worse"

    # T50 / T90 from FedIT's seed-mean target curve: round 0 minus 50 % / 90 % of its best gain.
    fedit_points = _mean_points(FEDIT_T, sum(UP_DOWN["fedit"]))
    start = fedit_points[0][1]
    gain = start - min(loss for _, loss, _ in fedit_points)
    targets = {"T50": start - 0.5 * gain, "T90": start - 0.9 * gain}
    assert summary["targets"] == pytest.approx(targets)
    assert summary["targets"] == pytest.approx({"T50": 1.415, "T90": 0.947})  # by hand
    assert summary["missing_targets"] == [] and "T_merge" not in text
    points = {name: _mean_points(TARGETS[name], sum(UP_DOWN[name])) for name in TARGETS}
    points["mole"] = [(r, loss, r * 2) for r, loss in enumerate(MOLE_T)]  # 1 up + 1 down
    for name, target in targets.items():
        fedit = _first(fedit_points, target)
        for entry, curve in points.items():
            got = entries[entry]["to_target"][name]
            expected = _first(curve, target)
            assert (got["round"], got["bytes"]) == (expected or (None, None)), (entry, name)
            if expected is None:
                assert got["fedit_bytes_over_entry"] is got["fedit_rounds_over_entry"] is None
            else:
                assert got["fedit_bytes_over_entry"] == pytest.approx(fedit[1] / expected[1])
                assert got["fedit_rounds_over_entry"] == pytest.approx(fedit[0] / expected[0])
    # The cases the inputs are made for: FedIT at T90 in round 3, the router in round 2 (the
    # mean of round 2 is 0.95 for FedIT, 0.90 for the router); merge never at T50; mole (one
    # finished seed) at T50 in round 1 and never at T90.
    assert entries["fedit"]["to_target"]["T90"]["round"] == 3
    assert entries["smartfed"]["to_target"]["T90"]["fedit_rounds_over_entry"] == pytest.approx(1.5)
    assert entries["merge"]["to_target"]["T50"]["round"] is None
    assert entries["mole"]["to_target"]["T50"]["bytes"] == 2
    assert entries["mole"]["to_target"]["T90"]["round"] is None

    # The grid column shows the target dev loss, the criterion the choice was made on, also for
    # the bench still running (its tuning runs' final target dev losses).
    mole = entries["mole"]
    assert mole["final_loss"]["n"] == 1 and mole["seeds"] == [0] and mole["vs_fedit"] is None
    assert mole["final_loss"]["mean"] == pytest.approx(MOLE_T[-1])
    assert "| grid (target dev loss, the choice criterion) |" in text
    assert "| final target test loss | vs fedit | in-distribution test loss |" in text
    mean, std = statistics.mean(finals["smartfed"]), statistics.stdev(finals["smartfed"])
    evals = [s[-1] for s in ROUTER.values()]
    assert (
        "| smartfed | smartfed | 2e-3 | 5e-4: 0.800, **2e-3: 0.600**, 1e-2: 1.100 | 3/3 | "
        f"{mean:.4f} ± {std:.4f} | tie | "
        f"{statistics.mean(evals):.4f} ± {statistics.stdev(evals):.4f} | 0.00 |"
    ) in text
    assert "| mole | mole | 5e-2 | 1e-2: 1.650, **5e-2: 1.550**, 2e-1: … | 1/3 |" in text
    rows = [line.split(" | ")[0] for line in text.split("## The question")[0].splitlines()]
    order = [row.removeprefix("| ") for row in rows if row.removeprefix("| ") in entries]
    assert order == sorted(entries, key=lambda n: entries[n]["final_loss"]["mean"])
    assert "### T50 = 1.4150" in text and "### T90 = 0.9470" in text
    assert "## Final target test loss per seed" in text
    assert "Not re-run: lorahub, fedsa_lora (" in text

    # A reference entry that has a folder (still tuning) is no longer "not re-run".
    (task / "lorahub").mkdir()
    bench = {"entries": [{"label": "lorahub"}], "seeds": [0], "select_on": "target"}
    (task / "lorahub" / "bench.json").write_text(json.dumps(bench))
    text = table.write_outputs("task", task, "cmd", metric="target_loss", with_plot=False)
    assert "Not re-run: fedsa_lora (" in text and "- lorahub (lorahub): grid untuned" in text


def test_target_metric_without_fedit(table, tmp_path):
    task = _task(tmp_path, on_target=True)
    for path in sorted((task / "fedit").rglob("summary.json")):
        path.unlink()  # FedIT's runs not finished yet
    text = table.write_outputs("task", task, "cmd", metric="target_loss", with_plot=False)
    summary = json.loads((task / "summary.json").read_text())
    assert summary["targets"] == {"T50": None, "T90": None}
    assert any("`fedit`" in line for line in summary["missing_targets"])
    assert "### T50" not in text and "- **T50** = not computed" in text
    assert summary["entries"]["smartfed"]["vs_fedit"] is None


def test_metric_option_and_default_folder(table, tmp_path, monkeypatch):
    assert "--metric" not in table.command_line("cn_math", table.RESULTS)
    assert table.command_line("cn_math", table.TARGET.results, "target_loss") == (
        ".venv/bin/python benchmarks/reference_table.py cn_math --metric target_loss"
    )
    _task(tmp_path, on_target=True)
    argv = ["reference_table.py", "task", "--metric", "target_loss", "--results", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    table.main()
    text = (tmp_path / "task" / "README.md").read_text()
    assert f"--metric target_loss --results {tmp_path}`" in text
    assert json.loads((tmp_path / "task" / "summary.json").read_text())["metric"] == "target_loss"


def test_target_accuracy_columns_pool_the_scored_seeds(table, tmp_path):
    """final_evals.sh's accuracy files: k/n summed over an entry's scored seeds with the Wilson
    interval of the pooled share; the floor is said when every scored entry is at or below 5 %."""
    task = _task(tmp_path, on_target=True)

    def score(entry: str, seed: int, name: str, correct: int, n: int = 128) -> None:
        path = task / entry / entry / f"seed{seed}" / name
        path.write_text(json.dumps({"benchmark": "b", "correct": correct, "n": n}))

    score("smartfed", 0, "accuracy_target.json", 3)
    score("smartfed", 1, "accuracy_target.json", 1)
    score("fedit", 0, "accuracy_target.json", 0)
    text = table.write_outputs("task", task, "cmd", metric="target_loss", with_plot=False)
    entries = json.loads((task / "summary.json").read_text())["entries"]
    pooled = entries["smartfed"]["accuracy"]["target"]
    assert (pooled["correct"], pooled["n"], pooled["runs"]) == (4, 256, 2)
    # Wilson 95 % for 4/256, by hand: centre (p + z^2/2n) / (1 + z^2/n), p = 1/64.
    z, n, p = 1.96, 256, 4 / 256
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    assert pooled["interval_95"] == pytest.approx([centre - half, centre + half])
    assert entries["smartfed"]["accuracy"]["test"] is None
    assert "target accuracy (greedy, k/n over the scored seeds)" in text
    assert "in-distribution accuracy" not in text  # nothing scored there
    row = next(line for line in text.splitlines() if line.startswith("| smartfed |"))
    assert row.endswith(f"| 4/256 (1.6%; 95 % {centre - half:.1%}–{centre + half:.1%}) |")
    assert next(line for line in text.splitlines() if line.startswith("| merge |")).endswith(
        "| – |"
    )
    assert "On the target's test slice every scored entry is at the floor" in text
    score("fedit", 1, "accuracy_target.json", 20)  # 20/256 = 7.8 %: off the floor
    text = table.write_outputs("task", task, "cmd", metric="target_loss", with_plot=False)
    assert "every scored entry is at the floor" not in text


def test_accuracy_counts_the_answers_that_gave_a_number(table, tmp_path):
    """At the floor, a model that still writes an equation that evaluates (or a program that
    returns a number) differs from one that loops: the pooled result counts the numeric answers
    of every scored seed, and says nothing where a result kept no items."""
    task = _task(tmp_path, on_target=True)
    extracted = [[2, 9.5, None, "16/5？（60%）", "def solution(): ...", True], [0, None]]
    for seed, answers in enumerate(extracted):
        items = [{"extracted": a, "correct": False} for a in answers]
        path = task / "smartfed" / "smartfed" / f"seed{seed}" / "accuracy_target.json"
        path.write_text(json.dumps({"correct": 0, "n": len(items), "items": items}))
    path = task / "fedit" / "fedit" / "seed0" / "accuracy_target.json"
    path.write_text(json.dumps({"correct": 1, "n": 4}))  # no items kept
    text = table.write_outputs("task", task, "cmd", metric="target_loss", with_plot=False)
    entries = json.loads((task / "summary.json").read_text())["entries"]
    assert entries["smartfed"]["accuracy"]["target"]["numeric"] == 3  # 2, 9.5, 0; not True
    assert entries["fedit"]["accuracy"]["target"]["numeric"] is None
    row = next(line for line in text.splitlines() if line.startswith("| smartfed |"))
    assert row.endswith("; 3 numeric) |")
    row = next(line for line in text.splitlines() if line.startswith("| fedit |"))
    assert "numeric" not in row and row.endswith("%) |")


def test_one_off_bytes_are_shown_apart_from_a_round(table, tmp_path):
    """Fed-SB's broadcast before round 1 (``bytes_setup``, inside round 1's bytes_down) is not a
    round's traffic: MiB / round leaves it out and shows it beside, MiB total keeps it."""
    task = _task(tmp_path, on_target=True)
    setup = 3 * 2**20
    for seed in (0, 1, 2):
        metrics = task / "smartfed" / "smartfed" / f"seed{seed}" / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows[0]["bytes_down"] += setup
        rows[0]["bytes_setup"] = setup
        metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
        summary_path = metrics.parent / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary["bytes_down"] += setup
        summary_path.write_text(json.dumps(summary))
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    entries = json.loads((task / "summary.json").read_text())["entries"]
    up, down = UP_DOWN["smartfed"]
    rounds = len(ROUTER[0]) - 1
    assert entries["smartfed"]["bytes_per_round"] == pytest.approx(up + down)
    assert entries["smartfed"]["setup_bytes"] == setup
    assert entries["smartfed"]["total_bytes"] == pytest.approx((up + down) * rounds + setup)
    assert "setup_bytes" not in entries["fedit"]
    row = next(line for line in text.splitlines() if line.startswith("| smartfed |"))
    assert f"| {table.mib(up + down)} (+ 3.00 once) |" in row
    assert "leaves out one-off bytes" in text


def test_target_pages_answer_the_question(table, tmp_path):
    """The target page's "The question": FedIT is the one knowledge-free entry here and sends
    more; the defaults tie with it (not lower) and never reach its best mean loss (0.83)."""
    task = _task(tmp_path, on_target=True)
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    section = text.split("## The question")[1].split("## Rounds and bytes")[0]
    fedit = statistics.mean(s[-1] for s in FEDIT_T.values())
    assert f"| fedit | {table.mib(sum(UP_DOWN['fedit']))} | {fedit:.4f} ± " in section
    ours = statistics.mean(s[-1] for s in ROUTER_T.values())
    assert f"| tie | {ours / fedit:.2f}x |" in section
    assert "- Lower than every such baseline: no." in section
    assert "best target loss is 0.8300 (its seed-mean curve's lowest, round 3" in section
    assert "SmartFed's defaults never reach it within their rounds." in section
    assert "- Answer: **no**." in section
    question = json.loads((task / "summary.json").read_text())["question"]
    assert question["holds"] is False and question["bytes"]["defaults_round"] is None
    # The in-distribution pages do not ask it.
    text = table.write_outputs("task", task, "cmd", with_plot=False)
    assert "## The question" not in text
    assert "question" not in json.loads((task / "summary.json").read_text())


def test_target_pages_name_the_seed0_studies_beside_them(table, tmp_path):
    """A folder that is not a reference entry of the target re-run (an ablation) stays off the
    target page, its tables and plots, and is named under the table; the in-distribution pages
    show every folder."""
    task = _task(tmp_path, on_target=True)
    shutil.copytree(task / "smartfed", task / "smartfed_k32")
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    summary = json.loads((task / "summary.json").read_text())
    assert "smartfed_k32" not in summary["entries"] and summary["studies"] == ["smartfed_k32"]
    assert "not on this page (`benchmarks/gate_table.py` -> `gate.md`" in text
    assert not any(line.startswith("| smartfed_k32 |") for line in text.splitlines())
    text = table.write_outputs("task", task, "cmd", with_plot=False)
    assert "| smartfed_k32 |" in text and "studies" not in json.loads(
        (task / "summary.json").read_text()
    )


def test_a_finished_bench_extended_to_more_seeds_shows_each_seed_as_it_lands(table, tmp_path):
    """The gate's bench (seed 0) extended by target_all.sh's seeds stage: bench.json names seeds
    0, 1, 2 before results.json does, and every finished seed counts meanwhile."""
    task = _task(tmp_path, on_target=True)
    results_path = task / "fedit" / "results.json"
    results = json.loads(results_path.read_text())
    (task / "fedit" / "bench.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    results_path.write_text(json.dumps({**results, "seeds": [0]}))
    (task / "fedit" / "fedit" / "seed2" / "summary.json").unlink()  # seed 2 still running
    table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    fedit = json.loads((task / "summary.json").read_text())["entries"]["fedit"]
    assert fedit["final_loss"]["n"] == 2
    assert fedit["final_loss"]["mean"] == pytest.approx((FEDIT_T[0][-1] + FEDIT_T[1][-1]) / 2)


def test_the_question_waits_for_a_knowledge_free_entry_still_running(table, tmp_path):
    """With FedIT still running and no other knowledge-free entry finished, the defaults have no
    finished rival, yet "lower than every such baseline" is not decided (not a yes)."""
    task = _task(tmp_path, on_target=True)
    for seed in FEDIT_T:
        (task / "fedit" / "fedit" / f"seed{seed}" / "summary.json").unlink()
    (task / "fedit" / "results.json").unlink()
    (task / "fedit" / "bench.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    question = json.loads((task / "summary.json").read_text())["question"]
    assert question["rivals"] == [] and question["lower_than_every_rival"] is None
    assert "fedit" in question["pending_knowledge_free"] and question["holds"] is None
    line = next(x for x in text.splitlines() if x.startswith("- Lower than every such"))
    assert line.startswith("- Lower than every such baseline: not decided yet (")
    assert "`fedit`" in line and line.endswith(" without a finished seed run).")


def test_a_bench_before_its_first_tuning_run_shows_its_grid_pending(table, tmp_path):
    """Only bench.json is there (a clone holds no unfinished run): its sole entry is tuned, its
    grid pending, as on the machine where the first tuning run is under way."""
    task = _task(tmp_path, on_target=True)
    folder = task / "fedit_r2"
    folder.mkdir()
    bench = {"entries": [{"label": "fedit", "method": "fedit"}], "seeds": [0, 1, 2],
             "sweep": [{"setting": "learning_rate", "values": [0.002, 0.01, 0.05]}],
             "select_on": "target"}  # fmt: skip
    (folder / "bench.json").write_text(json.dumps(bench))
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    assert "- fedit_r2 (fedit): grid 2e-3: …, 1e-2: …, 5e-2: …" in text
    (folder / "tune" / "fedit" / "learning_rate=0.002").mkdir(parents=True)  # started
    again = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    assert again == text


def test_a_choice_at_an_end_of_its_grid_is_named(table, tmp_path):
    """Tuning that picks the grid's top or bottom is named under the table: the best rate may
    lie beyond the grid. A choice inside it (FedIT's 2e-3 here) is not."""
    task = _task(tmp_path, on_target=True)
    results_path = task / "smartfed" / "results.json"
    results = json.loads(results_path.read_text())
    results["methods"]["smartfed"]["chosen"] = {"learning_rate": GRID[-1]}
    results_path.write_text(json.dumps(results))
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    line = next(line for line in text.splitlines() if line.startswith("Chosen at an end"))
    assert line.endswith(": smartfed (highest, 1e-2).")
    results["methods"]["smartfed"]["chosen"] = {"learning_rate": GRID[1]}
    results_path.write_text(json.dumps(results))
    text = table.write_outputs("task", task, "cmd", with_plot=False, metric="target_loss")
    assert "Chosen at an end" not in text


def test_every_plotted_entry_has_its_own_look(table):
    """tab10's colours repeat after 10 entries and the target pages have 14: colour and marker
    together tell every entry apart, and an entry keeps its look in both plots."""
    entries = [{"name": f"e{i}", "final_loss": {"mean": 1.0 + i, "n": 3}} for i in range(24)]
    styles = table.entry_styles(entries)
    looks = {(style["color"], style["marker"]) for style in styles.values()}
    assert len(styles) == len(looks) == 24
    assert table.entry_styles(list(reversed(entries))) == styles  # by the table's order
