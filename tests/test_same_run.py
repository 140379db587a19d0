"""benchmarks/same_run.py and final_evals.sh's reruns: a run whose weights were not committed is
run again from its saved config, and its rerun's weights are scored only when the rerun ended
where the committed run did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmark_scripts import import_benchmark

same_run = import_benchmark("same_run")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SUMMARY = {
    "rounds": 4, "bytes_up": 1000, "bytes_down": 1000,
    "final_eval": {"round": 4, "eval_loss": 0.1769},
    "final_target": {"round": 4, "target_loss": 0.1409},
}  # fmt: skip


def _with(**changes) -> dict:
    summary = json.loads(json.dumps(SUMMARY))
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            summary[section][name] = value
        else:
            summary[key] = value
    return summary


def test_a_rerun_reproduces_only_with_the_same_bytes_and_losses():
    assert same_run.differences(SUMMARY, _with(final_target__target_loss=0.14091)) == []
    assert same_run.differences(SUMMARY, _with(bytes_up=1004)) == ["bytes_up 1000 != 1004"]
    (found,) = same_run.differences(SUMMARY, _with(final_target__target_loss=0.1422))
    assert found.startswith("final_target.target_loss 0.1409 != 0.1422")
    # A loss one run has and the other lacks is a difference, not a match.
    assert same_run.differences(SUMMARY, {**SUMMARY, "final_target": None}) != []
    # Runs without a target (the in-distribution reference) compare on what they have.
    plain = {**SUMMARY, "final_target": None}
    assert same_run.differences(plain, plain) == []


def _run_folder(folder: Path, summary: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": "fedit"}))
    (folder / "partitions.json").write_text("{}")
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _final_evals(tmp_path: Path, results: Path, rerun_summary: dict) -> subprocess.CompletedProcess:
    """final_evals.sh with a stub smartfed: `run --resume DIR` finishes DIR with
    ``rerun_summary`` and weights; `eval --output F` writes a result naming its --run."""
    stub = tmp_path / "smartfed"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {tmp_path}/calls.log\n'
        'if [[ $1 == run ]]; then mkdir -p "$3/final"; '
        f"echo '{json.dumps(rerun_summary)}' > \"$3/summary.json\"; fi\n"
        'if [[ $1 == eval ]]; then run=$3; out=${@: -1}; '
        'echo "{\\"value\\": 0.5, \\"model\\": {\\"run_dir\\": \\"$run\\"}}" > "$out"; fi\n'
    )  # fmt: skip
    stub.chmod(0o755)
    return subprocess.run(
        [str(BENCHMARKS / "final_evals.sh"), str(results), "target_accuracy"],
        capture_output=True, text=True, cwd=BENCHMARKS.parent,
        env=dict(os.environ, SMARTFED=str(stub), PY=sys.executable,
                 RERUN_DIR=str(tmp_path / "reruns")),
    )  # fmt: skip


def test_final_evals_score_a_run_without_weights_through_a_rerun_that_reproduces_it(tmp_path):
    results = tmp_path / "target"
    run = _run_folder(results / "cn_math" / "fedit" / "fedit" / "seed0", SUMMARY)
    done = _final_evals(tmp_path, results, SUMMARY)
    assert done.returncode == 0, done.stderr
    rerun = tmp_path / "reruns" / "cn_math" / "fedit" / "fedit" / "seed0"
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0] == f"run --resume {rerun}"
    assert calls[1].startswith(f"eval --run {rerun} --benchmark mgsm_zh_math23k")
    assert json.loads((rerun / "config.json").read_text()) == {"method": "fedit"}
    result = json.loads((run / "accuracy_target.json").read_text())
    assert result["model"]["run_dir"] == str(run)  # the committed run, not the scratch copy
    assert result["model"]["rerun"] == {"dir": str(rerun), "largest_relative_loss_gap": 0.0}


def test_final_evals_skip_a_rerun_that_ends_elsewhere(tmp_path):
    results = tmp_path / "target"
    run = _run_folder(results / "math_code" / "fedit" / "fedit" / "seed0", SUMMARY)
    done = _final_evals(tmp_path, results, _with(final_target__target_loss=0.15))
    assert done.returncode == 0, done.stderr
    assert "does not reproduce" in done.stderr and "final_target.target_loss" in done.stderr
    assert f"skip {run} (no final weights, and no rerun that reproduces it)" in done.stdout
    assert not (run / "accuracy_target.json").exists()
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["run"]  # never scored


def test_final_evals_do_not_rerun_a_run_without_its_partitions(tmp_path):
    """A rerun needs the committed run's client partitions; without them it is not attempted."""
    results = tmp_path / "target"
    run = _run_folder(results / "cn_math" / "fedit" / "fedit" / "seed0", SUMMARY)
    (run / "partitions.json").unlink()
    done = _final_evals(tmp_path, results, SUMMARY)
    assert done.returncode == 0, done.stderr
    assert f"skip {run} (no final weights" in done.stdout
    assert not (tmp_path / "calls.log").exists() and not (tmp_path / "reruns").exists()
