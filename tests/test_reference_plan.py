"""benchmarks/reference_all.sh, reference.sh and data_limited.sh: every `smartfed bench` command
of the reference plan parses with SmartFed's own parser, and the plan covers every entry
reference.sh runs by default on both tasks. smartfed is replaced by a stub that records its
arguments."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from smartfed.assembly.config import gather
from smartfed.bench.tables import TARGET_ENTRIES
from smartfed.cli.main import build_parser
from smartfed.cli.run_command import given_settings
from tests.benchmark_scripts import import_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STEP = re.compile(r"^benchmarks/reference\.sh (\S+) (.+)$")


def plan_steps() -> list[tuple[str, list[str]]]:
    text = (BENCHMARKS / "reference_all.sh").read_text()
    return [(m[1], m[2].split()) for m in map(STEP.match, text.splitlines()) if m]


def default_entries() -> list[str]:
    text = (BENCHMARKS / "reference.sh").read_text()
    return re.search(r'"\$\{@:-([^}]+)\}"', text)[1].split()


def recorded_commands(
    task: str, entries: list[str], tmp_path: Path, script: str = "reference.sh"
) -> list[list[str]]:
    log = tmp_path / "argv.log"
    stub = tmp_path / "smartfed"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    stub.chmod(0o755)
    env = dict(os.environ, SMARTFED=str(stub), OUT=str(tmp_path / "out"))
    done = subprocess.run(
        [str(BENCHMARKS / script), task, *entries], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in log.read_text().splitlines()]


def test_plan_covers_every_default_entry_on_both_tasks():
    steps = plan_steps()
    for task in ("cn_math", "math_code"):
        planned = {entry for step_task, entries in steps if step_task == task for entry in entries}
        assert set(default_entries()) | {"smartfed_pool_v2", "merge_pool_v2"} <= planned, task


@pytest.mark.parametrize("task, entries", plan_steps(), ids=lambda x: str(x))
def test_every_planned_command_parses(task, entries, tmp_path):
    commands = recorded_commands(task, entries, tmp_path)
    assert len(commands) == len(entries)
    for argv, entry in zip(commands, entries, strict=True):
        args = build_parser().parse_args(argv)  # argparse exits on an unknown flag or bad value
        assert args.command == "bench"
        assert args.task == task and args.seeds == "0,1,2" and args.eval_samples == 128
        assert args.output_dir.endswith(f"/{task}/{entry}")
        pool = args.lora_pool.split(",")
        assert all(name.endswith("_v2") for name in pool) == entry.endswith("_pool_v2")


def test_unknown_entry_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="unknown entry nonsense"):
        recorded_commands("cn_math", ["nonsense"], tmp_path)


def test_data_limited_arms_parse_and_differ_only_in_data_and_method(tmp_path):
    commands = recorded_commands("cn_math", [], tmp_path, script="data_limited.sh")
    parsed = {Path(a.output_dir).name: a for a in map(build_parser().parse_args, commands)}
    assert list(parsed) == ["fedit", "smartfed_data10", "smartfed"]  # the claim's arms first
    for arm, args in parsed.items():
        assert (args.num_rounds, args.local_steps, args.seeds) == (12, 8, "0,1,2"), arm
        assert args.methods == arm.removesuffix("_data10") and args.sweep, arm
    assert parsed["smartfed_data10"].train_fraction == 0.1
    assert parsed["smartfed"].train_fraction is None  # all of the data
    assert parsed["smartfed_data10"].sweep == parsed["smartfed"].sweep


def test_data_limited_refuses_an_unknown_arm(tmp_path):
    with pytest.raises(AssertionError, match="unknown arm 'nonsense'"):
        recorded_commands("cn_math", ["nonsense"], tmp_path, script="data_limited.sh")


def test_transfer_evaluates_only_runs_that_still_have_weights(tmp_path):
    results = tmp_path / "reference"
    runs = {name: results / "math_code" / name / "m" / "seed0" for name in
            ("fresh", "weights_gone", "done", "fedsa")}  # fmt: skip
    for name, run in runs.items():
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
        method = "fedsa_lora" if name == "fedsa" else "fedit"
        (run / "config.json").write_text(json.dumps({"method": method}, indent=0))
        if name != "weights_gone":
            (run / "final").mkdir()
    (runs["weights_gone"] / "partitions.json").write_text("{}")
    (runs["done"] / "transfer_loss.json").write_text("{}")
    log = tmp_path / "argv.log"
    stub = tmp_path / "smartfed"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    stub.chmod(0o755)
    reruns = tmp_path / "reruns"
    done = subprocess.run(
        [str(BENCHMARKS / "reference_transfer.sh"), str(results)], capture_output=True, text=True,
        env=dict(os.environ, SMARTFED=str(stub), PY=sys.executable, RERUN_DIR=str(reruns)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    # The run without weights is run again for them; this stub's rerun never finishes, so it
    # is not scored (tests/test_same_run.py scores one that reproduces its run).
    rerun = reruns / "math_code" / "weights_gone" / "m" / "seed0"
    assert [argv for argv in calls if argv[0] == "run"] == [["run", "--resume", str(rerun)]]
    evaluated = [argv for argv in calls if argv[0] == "eval"]
    assert [argv[argv.index("--run") + 1] for argv in evaluated] == [str(runs["fresh"])]
    assert "no final weights" in done.stdout and "no global model" in done.stdout


GATE_AND_EQUAL_BYTES = ["fedit_r2", "ffa_lora_r2", "fedit_bf16", "fed_sb_r26", "fed_sb_r31",
                        "pool_bridge"]  # fmt: skip


@pytest.mark.parametrize("task", ["cn_math", "math_code"])
def test_target_entries_parse_and_tune_on_the_target(task, tmp_path):
    gate = re.search(r"ENTRIES=\$\{\*:-([^}]+)\}", (BENCHMARKS / "gate.sh").read_text())[1]
    entries = [*gate.split(), *GATE_AND_EQUAL_BYTES]
    commands = recorded_commands(task, entries, tmp_path)
    assert len(commands) == len(entries)
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.target_samples == 128 and args.select_on is None  # the task's default: target
        assert args.sweep, "every gate entry is tuned over a grid"


# What each ablation entry's runs get, resolved as a run resolves its settings (top-K turns
# EEQA on unless --no-enable_eeqa says otherwise).
ABLATION = {"smartfed_scale1": {"output_scale": "one", "dense": True},
            "smartfed_router_x": {"router": "lowrank", "router_rank": 1, "dense": True},
            "smartfed_k32": {"topk_experts": 32, "enable_eeqa": False, "dense": False},
            "smartfed_k32_eeqa": {"topk_experts": 32, "enable_eeqa": True, "dense": False},
            "smartfed_residual_r1": {"residual_rank": 1, "dense": True}}  # fmt: skip


def resolved_settings(argv: list[str]) -> dict:
    """The method settings a run of this bench command records in its config.json."""
    args = build_parser().parse_args(argv)
    values = gather(preset=args.preset, config_file=args.config, overrides=given_settings(args))
    return values.config_for(args.methods, strict=False).to_dict()["method_settings"]


ROUTINGS = {"dense": (True, None, None), "k32": (False, 32, False), "k32_eeqa": (False, 32, True)}


@pytest.mark.parametrize("task", ["cn_math", "math_code"])
def test_defaults_stage_completes_the_design_by_routing_grid(task, tmp_path):
    """The defaults stage plus the gate's and the ablation's SmartFed entries cover every
    router design within the bytes rule x every routing (no scale, residual or pool change)."""
    text = (BENCHMARKS / "target_all.sh").read_text()
    entries = ["smartfed", "smartfed_router_x", "smartfed_k32", "smartfed_k32_eeqa",
               *re.search(r'DEFAULTS="([^"]+)"', text)[1].split()]  # fmt: skip
    commands = recorded_commands(task, entries, tmp_path)
    cells = set()
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.methods == "smartfed" and args.output_scale is None and args.sweep
        assert args.residual_rank is None and "_only_" not in args.output_dir
        design = (args.router or "diag_lowrank", args.router_rank)
        run = resolved_settings(argv)
        routing = next(
            n for n, v in ROUTINGS.items()
            if v == (run["dense"], run["topk_experts"], run["enable_eeqa"])
        )  # fmt: skip
        cells.add((design, routing))
    designs = {("diag_lowrank", None), ("diagonal", None), ("lowrank", 1)}
    assert cells == {(d, r) for d in designs for r in ROUTINGS}


def test_target_all_runs_every_ablation_entry():
    text = (BENCHMARKS / "target_all.sh").read_text()
    assert re.search(r'ABLATION="([^"]+)"', text)[1].split() == list(ABLATION)


@pytest.mark.parametrize(
    ("task", "modules"),
    [("cn_math", ["cn_chat", "en_math"]), ("math_code", ["en_math", "en_code"])],
)
def test_ablation_entries_change_one_thing_each(task, modules, tmp_path):
    only = [f"smartfed_only_{m}" for m in modules]
    commands = recorded_commands(task, [*ABLATION, *only], tmp_path)
    parsed = [build_parser().parse_args(argv) for argv in commands]
    for argv, args, (entry, changed) in zip(commands, parsed, ABLATION.items(), strict=False):
        assert args.methods == "smartfed" and args.lora_pool == ",".join(modules), entry
        for setting, value in changed.items():
            assert resolved_settings(argv)[setting] == value, (entry, setting)
    for args, module in zip(parsed[len(ABLATION) :], modules, strict=True):
        assert args.methods == "smartfed" and args.lora_pool == module
        assert args.output_dir.endswith(f"/{task}/smartfed_only_{module}")


def test_only_a_module_of_the_tasks_pool(tmp_path):
    with pytest.raises(AssertionError, match="en_code is not in cn_math's pool"):
        recorded_commands("cn_math", ["smartfed_only_en_code"], tmp_path)


def test_target_all_refuses_an_unknown_stage():
    done = subprocess.run(
        [str(BENCHMARKS / "target_all.sh"), "nonsense"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "unknown stage nonsense" in done.stderr


@pytest.mark.parametrize("task", ["cn_math", "math_code"])
def test_target_all_seeds_every_reference_entry(task, tmp_path):
    text = (BENCHMARKS / "target_all.sh").read_text()
    seeded = re.search(r'SEEDED="([^"]+)"', text)[1].split()
    commands = recorded_commands(task, seeded, tmp_path)
    assert len(commands) == len(seeded)
    names = {Path(build_parser().parse_args(argv).output_dir).name for argv in commands}
    must = {"fedit", "fedit_r1", "fedit_r2", "ffa_lora", "ffa_lora_r2", "fed_sb_r26",
            "fed_sb_r31", "smartfed", "smartfed_paper", "pool_bridge", "mole", "merge"}  # fmt: skip
    assert must <= names


def test_the_target_pages_and_the_readme_show_the_seeded_entries():
    """target_all.sh's seeds stage, the target pages' entries (the rest of the folder is seed-0
    studies) and the README table's rows name the same entries."""
    text = (BENCHMARKS / "target_all.sh").read_text()
    seeded = re.search(r'SEEDED="([^"]+)"', text)[1].split()
    assert seeded == list(TARGET_ENTRIES)
    assert set(import_benchmark("readme_table").ROWS) == set(TARGET_ENTRIES)


def test_finalists_rerun_the_chosen_rate_with_seeds_1_and_2_on_the_dev_slice(tmp_path):
    """target_all.sh's finalists stage: for each "TASK ENTRY RATE" line of defaults_table.py, a
    tuning-only bench of that one rate with seed 1, then 2, in its own folder."""
    log = tmp_path / "argv.log"
    smartfed = tmp_path / "smartfed"
    smartfed.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    python = tmp_path / "python"  # defaults_table.py's plan, then its table
    plan = "cn_math smartfed 0.05\\nmath_code smartfed_k32 0.2\\n"
    python.write_text(
        f'#!/usr/bin/env bash\n[[ " $* " == *" --finalists "* ]] && printf "{plan}"\ntrue\n'
    )
    for stub in (smartfed, python):
        stub.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(BENCHMARKS / "target_all.sh"), "finalists"], capture_output=True, text=True,
        env=dict(os.environ, SMARTFED=str(smartfed), PY=str(python), OUT=str(out)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    parsed = [build_parser().parse_args(shlex.split(line)) for line in log.read_text().splitlines()]
    got = [(a.task, a.seeds, a.sweep, a.tune_only, a.output_dir) for a in parsed]
    assert got == [
        ("cn_math", "1", ["learning_rate=0.05"], True, f"{out}/finalists/seed1/cn_math/smartfed"),
        ("cn_math", "2", ["learning_rate=0.05"], True, f"{out}/finalists/seed2/cn_math/smartfed"),
        ("math_code", "1", ["learning_rate=0.2"], True,
         f"{out}/finalists/seed1/math_code/smartfed_k32"),
        ("math_code", "2", ["learning_rate=0.2"], True,
         f"{out}/finalists/seed2/math_code/smartfed_k32"),
    ]  # fmt: skip
    assert all(a.topk_experts == 32 for a in parsed[2:]) and parsed[0].topk_experts is None


def _finished_run(run: Path, config: dict) -> None:
    """A finished seed run with final weights, as final_evals.sh looks for them."""
    (run / "final").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (run / "config.json").write_text(json.dumps(config, indent=0))


def _final_evals(tmp_path: Path, argv: list[str], **env: str) -> list:
    """final_evals.sh ARGV with a stub smartfed that records its calls: their parsed args."""
    log = tmp_path / "argv.log"
    stub = tmp_path / "smartfed"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    stub.chmod(0o755)
    done = subprocess.run(
        [str(BENCHMARKS / "final_evals.sh"), *argv], capture_output=True, text=True,
        env=dict(os.environ, SMARTFED=str(stub), RERUN_DIR=str(tmp_path / "reruns"), **env),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines() if log.is_file() else []
    return [build_parser().parse_args(shlex.split(line)) for line in lines]


def test_final_evals_score_each_seed_run_once_with_the_tasks_benchmarks(tmp_path):
    """final_evals.sh: accuracy on the target's test slice and on the in-distribution test per
    task, the style-shift loss on math_code only; SEEDS limits the seeds; done files are kept."""
    results = tmp_path / "target"
    for task, seed in (("cn_math", 0), ("cn_math", 1), ("math_code", 0)):
        _finished_run(results / task / "fedit" / "fedit" / f"seed{seed}", {"method": "fedit"})
    done_run = results / "math_code" / "fedit" / "fedit" / "seed0"
    (done_run / "accuracy_test.json").write_text("{}")
    got = []
    for args in _final_evals(tmp_path, [str(results)], SEEDS="0"):
        assert args.command == "eval" and args.limit == 128
        got.append((Path(args.run_dir).parts[-4], args.benchmark, Path(args.output).name))
    assert got == [
        ("cn_math", "mgsm_zh_math23k", "accuracy_target.json"),
        ("math_code", "gsm_hard_gsm8k_pal", "accuracy_target.json"),
        ("cn_math", "math23k", "accuracy_test.json"),  # math_code's is there already
        ("math_code", "loss", "transfer_loss.json"),
    ]
    bad = subprocess.run([str(BENCHMARKS / "final_evals.sh"), str(results), "nonsense"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "unknown measure nonsense" in bad.stderr


def test_final_evals_entries_limit_the_folders(tmp_path):
    """ENTRIES names the entry folders to score (target_all.sh: the reference entries, not the
    ablation's), in its order, not the folders' (the most wanted first, should a session end on
    the way); an entry whose name is a prefix of another's is not mistaken for it."""
    results = tmp_path / "target"
    for entry in ("fedit", "fedit_r1", "smartfed_k32"):
        _finished_run(results / "cn_math" / entry / "x" / "seed0", {})
    parsed = _final_evals(
        tmp_path, [str(results), "target_accuracy"], ENTRIES="smartfed_k32\n  fedit absent"
    )
    assert [Path(args.run_dir).parts[-3] for args in parsed] == ["smartfed_k32", "fedit"]
    (tmp_path / "argv.log").unlink()
    every = _final_evals(tmp_path, [str(results), "target_accuracy"], ENTRIES="")
    assert [Path(args.run_dir).parts[-3] for args in every] == ["fedit", "fedit_r1", "smartfed_k32"]


@pytest.mark.parametrize("task", ["cn_math", "math_code"])
def test_paper_parts_change_one_part_of_the_papers_configuration(task, tmp_path):
    """smartfed_paper's linear router dense and with uniform K = 32, on its own grid, run by the
    defaults stage: with smartfed_paper and smartfed_k32_eeqa they isolate each part."""
    text = (BENCHMARKS / "target_all.sh").read_text()
    parts = re.search(r'PAPER_PARTS="([^"]+)"', text)[1].split()
    commands = recorded_commands(task, ["smartfed_paper", *parts], tmp_path)
    runs = [resolved_settings(argv) for argv in commands]
    routing = [(r["router"], r["dense"], r["topk_experts"], r["enable_eeqa"]) for r in runs]
    assert routing == [("linear", False, 32, True), ("linear", True, None, None),
                       ("linear", False, 32, False)]  # fmt: skip
    sweeps = {tuple(build_parser().parse_args(argv).sweep) for argv in commands}
    assert len(sweeps) == 1  # the same grid as the paper's configuration
