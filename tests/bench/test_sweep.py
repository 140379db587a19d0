"""Honest tuning: ``smartfed bench --sweep ... --seeds ...`` chooses on a validation slice of the
training data (never on the test split), then reports the choice on the test split over seeds."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from smartfed.assembly.runtime import hold_out
from smartfed.bench.stats import TIE_RULE, compare_spreads, spread
from smartfed.bench.sweep import choose
from smartfed.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _tiny_flags(config, task: str | None = None) -> list[str]:
    return [
        "--model_name_or_path", config.model_name_or_path,
        "--lora_pool", config.lora_pool,
        "--task", task or config.task,
        "--num_clients", "2", "--sample_clients", "2", "--num_rounds", "1",
        "--local_steps", "1", "--batch_size", "4", "--max_seq_len", "48",
        "--eval_samples", "4", "--eval_batch_size", "4",
    ]  # fmt: skip


def _json(path: Path):
    return json.loads(path.read_text())


@pytest.mark.integration  # a whole run end to end
def test_sweep_over_seeds_chooses_on_validation_loss(tiny_run_config, tmp_path, capsys):
    config = tiny_run_config()
    out = tmp_path / "bench"
    argv = [
        "bench", "--methods", "fedit,smartfed,merge", *_tiny_flags(config),
        "--sweep", "learning_rate=1e-3,1e-2", "--seeds", "0,1", "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err

    bench = _json(out / "bench.json")
    assert bench["sweep"] == [{"setting": "learning_rate", "values": [1e-3, 1e-2]}]
    assert bench["seeds"] == [0, 1]
    results = _json(out / "results.json")
    assert results["sweep"] == bench["sweep"] and results["seeds"] == [0, 1]
    assert results["tie_rule"] == TIE_RULE and results["reference"] == "fedit"
    train_size = 48  # the tiny task's train.jsonl
    for label in ("fedit", "smartfed"):
        entry = results["methods"][label]
        assert entry["tuned"] and entry["untuned_reason"] is None
        grid = entry["grid"]
        assert [p["point"] for p in grid] == [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}]
        for point in grid:
            run = out / point["run_dir"]
            assert run.parent == out / "tune" / label
            saved = _json(run / "config.json")
            assert saved["eval_split"] == "validation" and saved["seed"] == 0
            # Only the final losses choose: no evaluation between.
            assert saved["eval_every"] == saved["target_every"] == saved["num_rounds"]
            assert saved["method_settings"]["learning_rate"] == point["point"]["learning_rate"]
            # The recorded loss is the tuning run's final validation loss ...
            assert (
                point["validation_loss"] == _json(run / "summary.json")["final_eval"]["eval_loss"]
            )
            # ... and the validation slice is out of every client's partition.
            clients = _json(run / "partitions.json")["clients"]
            assert sum(c["size"] for c in clients) == train_size - 4
        losses = [p["validation_loss"] for p in grid]
        assert entry["chosen"] == grid[losses.index(min(losses))]["point"]
        assert entry["chosen_by"] == "lowest final validation loss"
        for seed in (0, 1):
            run = out / label / f"seed{seed}"
            saved = _json(run / "config.json")
            assert saved["eval_split"] == "test" and saved["seed"] == seed
            assert saved["method_settings"]["learning_rate"] == entry["chosen"]["learning_rate"]
            clients = _json(run / "partitions.json")["clients"]
            assert sum(c["size"] for c in clients) == train_size
    # The two seeds are distinct runs (other partitions and batches), not copies.
    rows = [(out / f"fedit/seed{s}/metrics.jsonl").read_text() for s in (0, 1)]
    assert json.loads(rows[0])["train_loss"] != json.loads(rows[1])["train_loss"]

    merge = results["methods"]["merge"]
    assert not merge["tuned"] and merge["chosen"] is None and merge["grid"] == []
    assert "does not declare learning_rate" in merge["untuned_reason"]
    assert not (out / "tune" / "merge").exists()

    # mean ± sample std over the seeds, from the per-seed test losses.
    for label, entry in results["methods"].items():
        assert sorted(entry["per_seed"]) == ["0", "1"], label
        values = [entry["per_seed"][s]["final_eval_loss"] for s in ("0", "1")]
        for seed, value in zip((0, 1), values, strict=True):
            summary = _json(out / label / f"seed{seed}" / "summary.json")
            assert value == summary["final_eval"]["eval_loss"]
        stats = entry["stats"]["final_eval_loss"]
        assert stats["n"] == 2 and stats["values"] == values
        assert stats["mean"] == pytest.approx(statistics.mean(values))
        assert stats["std"] == pytest.approx(statistics.stdev(values))
        assert entry["final_eval_loss"] == pytest.approx(stats["mean"])  # the single-run field
        ref = results["methods"]["fedit"]["stats"]["final_eval_loss"]
        diff = stats["mean"] - ref["mean"]
        tie = abs(diff) <= stats["std"] + ref["std"]
        expected = "tie" if tie else ("better" if diff < 0 else "worse")
        assert entry["vs_fedit"]["verdict"] == expected, label
    table = (out / "results.md").read_text()
    assert "|mean_a - mean_b| <= std_a + std_b" in table
    assert "| merge |" in table and "untuned (method merge does not declare" in table
    assert (out / "report.md").is_file() and (out / "loss_vs_round.png").is_file()

    # A rerun skips every finished run; another grid in the same folder is refused.
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done, skipped") == 4 + 6
    other = [a if a != "learning_rate=1e-3,1e-2" else "learning_rate=1e-3,3e-2" for a in argv]
    assert main(other) == 1
    err = capsys.readouterr().err
    assert "another --sweep" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration  # a whole run end to end
def test_tuning_never_reads_the_test_split(tiny_run_config, tiny_task, tmp_path, capsys):
    config = tiny_run_config()
    folder = tmp_path / "task"
    folder.mkdir()
    shutil.copy(Path(tiny_task.format(split="train")), folder / "train.jsonl")
    test_file = Path(tiny_task.format(split="test"))
    task = str(folder / "{split}.jsonl")  # no test.jsonl there
    out = tmp_path / "bench"
    argv = [
        "bench", "--methods", "fedit", *_tiny_flags(config, task),
        "--sweep", "learning_rate=1e-3,1e-2", "--output_dir", str(out),
    ]  # fmt: skip

    # The whole bench needs the test split and says so before any work ...
    assert main(argv) == 1
    assert "test" in capsys.readouterr().err and not out.exists()
    # ... the tuning phase does not.
    assert main([*argv, "--tune_only"]) == 0, capsys.readouterr().err
    results = _json(out / "results.json")
    assert results["phase"] == "tuning"
    fedit = results["methods"]["fedit"]
    losses = [p["validation_loss"] for p in fedit["grid"]]
    assert all(loss > 0 for loss in losses)
    assert fedit["chosen"] == fedit["grid"][choose(losses)]["point"]
    assert not (out / "fedit").exists()  # no test-split run yet

    # With the test file back, the same bench finishes: tuning is reused, not rerun.
    shutil.copy(test_file, folder / "test.jsonl")
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("done, skipped") == 2
    final = _json(out / "results.json")
    assert final["phase"] == "final"
    assert final["methods"]["fedit"]["chosen"] == fedit["chosen"]
    assert final["methods"]["fedit"]["stats"]["final_eval_loss"]["n"] == 1


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--sweep", "nope=1,2"], "--sweep: unknown setting 'nope'"),
        (["--sweep", "learning_rate"], "--sweep expects SETTING=v1,v2"),
        (["--sweep", "seed=1,2"], "seed cannot be swept (use --seeds)"),
        (["--sweep", "learning_rate=1e-3,abc"], "'abc' is not a float"),
        (["--sweep", "learning_rate=1e-3,1e-3"], "lists a value twice"),
        (["--methods", "merge", "--sweep", "learning_rate=1e-3,1e-2"],
         "no entry of this bench declares learning_rate"),
        (["--methods", "fedit", "--sweep", "learning_rate=-1,1e-3"], "--learning_rate must be"),
        (["--sweep", "learning_rate=1e-3", "--learning_rate", "1e-2"], "swept by --sweep"),
        (["--seeds", "0,x"], "--seeds expects comma-separated integers"),
        (["--seeds", "0,1", "--seed", "2"], "either --seed or --seeds"),
        (["--tune_only"], "--tune_only needs --sweep"),
        (["--sweep", "learning_rate=1e-3", "--eval_split", "validation"], "--eval_split"),
    ],
)  # fmt: skip
def test_bad_sweeps_fail_in_one_line_before_work(argv, fragment, capsys, tmp_path):
    assert main(["bench", "--output_dir", str(tmp_path / "b"), *argv]) == 1
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def test_hold_out_is_seeded_and_disjoint():
    examples = list(range(30))
    train, val = hold_out(examples, 6, seed=3, num_clients=4)
    assert len(val) == 6 and sorted(train + val) == examples and not set(train) & set(val)
    assert hold_out(examples, 6, seed=3, num_clients=4) == (train, val)
    assert hold_out(examples, 6, seed=4, num_clients=4)[1] != val
    with pytest.raises(Exception, match="lower --eval_samples"):
        hold_out(examples, 28, seed=0, num_clients=4)


def test_tie_rule_and_sample_std():
    a = spread([1.0, 1.2])
    assert a["mean"] == pytest.approx(1.1) and a["std"] == pytest.approx(statistics.stdev([1, 1.2]))
    assert spread([1.0, None])["std"] is None and spread([1.0, None])["n"] == 1
    b = spread([1.3, 1.5])  # |1.1 - 1.4| = 0.3 > 0.1414 + 0.1414
    assert compare_spreads(a, b)["verdict"] == "better"
    assert compare_spreads(b, a)["verdict"] == "worse"
    c = spread([1.2, 1.4])  # |1.1 - 1.3| = 0.2 <= 0.2828
    assert compare_spreads(a, c)["verdict"] == "tie"
    assert compare_spreads(spread([1.0]), c)["verdict"] is None  # one seed: no spread
    assert choose([2.0, 1.5, 1.5, float("nan")]) == 1 and choose([None, float("inf")]) is None


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize(
    "folder", sorted(p.parent.name for p in (REPO / "benchmarks/results").glob("*/bench.json"))
)
def test_report_still_reads_the_committed_benches(folder, tmp_path):
    assert (
        main(["report", str(REPO / "benchmarks/results" / folder), "--output", str(tmp_path)]) == 0
    )
    page = (tmp_path / "report.md").read_text()
    assert "| fedit |" in page and (tmp_path / "loss_vs_round.png").is_file()


def test_validation_runs_refuse_the_test_benchmark(capsys, tmp_path):
    argv = ["run", "--eval_split", "validation", "--metric_samples", "2"]
    assert main([*argv, "--output_dir", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "--metric_samples scores the task's test benchmark" in err
    assert len(err.strip().splitlines()) == 1


def test_bench_help_describes_sweep_and_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--sweep SETTING=v1,v2,...", "--seeds S1,S2,...", "--tune_only",
                     "validation slice", "std_a + std_b"):  # fmt: skip
        assert fragment in text, fragment


@pytest.mark.integration  # a whole run end to end
def test_a_bench_may_grow_its_grid_and_seeds_but_never_reuses_a_stale_run(
    tiny_run_config, tmp_path, capsys
):
    config = tiny_run_config()
    out = tmp_path / "bench"
    base = ["bench", "--methods", "fedit", *_tiny_flags(config), "--output_dir", str(out)]
    assert main([*base, "--sweep", "learning_rate=1e-3", "--seeds", "0"]) == 0
    first = _json(out / "fedit" / "seed0" / "config.json")["method_settings"]["learning_rate"]
    assert first == 1e-3

    # More grid points and seeds: the finished tuning run is reused, the new ones run. If the
    # wider grid chooses another point, seed0 (run with 1e-3) must not be reported under it.
    capsys.readouterr()
    code = main([*base, "--sweep", "learning_rate=1e-3,5e-2", "--seeds", "0,1"])
    output = capsys.readouterr()
    assert "[tune 1/2] fedit learning_rate=0.001: done, skipped" in output.out
    losses = {
        lr: _json(out / "tune" / "fedit" / f"learning_rate={lr}" / "summary.json")["final_eval"][
            "eval_loss"
        ]
        for lr in ("0.001", "0.05")
    }
    if losses["0.001"] <= losses["0.05"]:  # 1e-3 still chosen: seed0 reused, seed1 added
        assert code == 0, output.err
        assert _json(out / "results.json")["methods"]["fedit"]["chosen"] == {"learning_rate": 1e-3}
        assert "fedit seed0: done, skipped" in output.out
        assert (out / "fedit" / "seed1" / "summary.json").is_file()
    else:  # 5e-2 chosen: seed0 was run with 1e-3 and must not be reported under 5e-2
        assert code == 1
        errors = [line for line in output.err.splitlines() if "error" in line]
        assert len(errors) == 1, output.err  # (other stderr lines: the clients' progress)
        assert "was run with learning_rate=0.001" in errors[0]
        assert "plans learning_rate=0.05" in errors[0]

    # The first seed is the tuning seed: changing it is refused.
    assert main([*base, "--sweep", "learning_rate=1e-3,5e-2", "--seeds", "1,0"]) == 1
    assert "another --seeds" in capsys.readouterr().err


@pytest.mark.integration  # a whole run end to end
def test_tuning_runs_evaluate_only_after_the_last_round(tiny_run_config, tmp_path, capsys):
    config = tiny_run_config()
    out = tmp_path / "bench"
    flags = _tiny_flags(config)
    flags[flags.index("--num_rounds") + 1] = "2"
    argv = ["bench", "--methods", "fedit", *flags, "--sweep", "learning_rate=1e-3",
            "--tune_only", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    run = out / "tune" / "fedit" / "learning_rate=0.001"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert ["eval_loss" in r for r in rows] == [False, True]


def _target_task(tmp_path: Path, tiny_task: str) -> tuple[str, str]:
    """A copy of the tiny task plus a target set (three-term sums), as JSONL patterns."""
    import random

    task_dir, target_dir = tmp_path / "task", tmp_path / "target"
    task_dir.mkdir()
    target_dir.mkdir()
    for split in ("train", "test"):
        shutil.copy(tiny_task.replace("{split}", split), task_dir / f"{split}.jsonl")
    rng = random.Random(3)
    for split in ("dev", "test"):
        with (target_dir / f"{split}.jsonl").open("w") as handle:
            for _ in range(6):
                a, b, c = (rng.randint(0, 9) for _ in range(3))
                row = {"prompt": f"{a}+{b}+{c}=", "response": str(a + b + c)}
                handle.write(json.dumps(row) + "\n")
    return str(task_dir / "{split}.jsonl"), str(target_dir / "{split}.jsonl")


def test_select_on_target_never_reads_test_data(tiny_run_config, tiny_task, tmp_path, capsys):
    """Tuning on the target's dev slice: with every test record replaced by one that raises
    when read, the tuning phase completes and chooses exactly as with the real files."""
    config = tiny_run_config()
    task, target = _target_task(tmp_path, tiny_task)

    def tune(out: Path) -> dict:
        argv = [
            "bench", "--methods", "fedit,smartfed", *_tiny_flags(config, task),
            "--target_data", target, "--target_samples", "6",
            "--sweep", "learning_rate=1e-3,5e-2", "--tune_only", "--output_dir", str(out),
        ]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        return _json(out / "results.json")

    intact = tune(tmp_path / "intact")
    for pattern in (task, target):  # test records that raise when read (not JSON)
        Path(pattern.replace("{split}", "test")).write_text("this raises when read\n")
    poisoned = tune(tmp_path / "poisoned")
    for label in ("fedit", "smartfed"):
        entry = poisoned["methods"][label]
        assert entry["chosen_by"] == "lowest final target dev loss"
        losses = [p["target_dev_loss"] for p in entry["grid"]]
        assert all(loss is not None for loss in losses)
        assert entry["chosen"] == entry["grid"][losses.index(min(losses))]["point"]
        assert entry["chosen"] == intact["methods"][label]["chosen"]
        assert losses == [p["target_dev_loss"] for p in intact["methods"][label]["grid"]]
        for point in entry["grid"]:
            saved = _json(tmp_path / "poisoned" / point["run_dir"] / "config.json")
            assert saved["target_split"] == "dev" and saved["eval_split"] == "validation"
    assert poisoned["select_on"] == "target"
    text = (tmp_path / "poisoned" / "results.md").read_text()
    assert "final target dev loss per grid point" in text
    for label in ("fedit", "smartfed"):  # the table holds each grid point's target dev loss
        losses = [f"{p['target_dev_loss']:.4f}" for p in poisoned["methods"][label]["grid"]]
        assert f"| {label} | {' | '.join(losses)} | " in text


def test_select_on_target_needs_a_target_set(tiny_run_config, capsys):
    config = tiny_run_config()
    argv = ["bench", "--methods", "fedit", *_tiny_flags(config), "--select_on", "target",
            "--sweep", "learning_rate=1e-3,5e-2", "--tune_only"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "has no target set" in err and len(err.strip().splitlines()) == 1
