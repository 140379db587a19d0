"""The evaluations of all three tasks run with no data folder: the bundled GSM-Hard, HumanEval and
MBPP subsets (issue 12 item 6), from a working directory that is not the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smartfed.cli.main import main
from smartfed.data import DATA_DIR_ENV, HUB_MIRROR_ENV, load_examples
from smartfed.evaluation.benchmarks import get_benchmark
from smartfed.evaluation.sandbox import SandboxLimits

BENCHMARKS = ("gsm_hard", "humaneval", "mbpp")  # math_code, cn_code (offline too), ...


@pytest.fixture
def fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No data dir, no hub mirror, a working directory of its own."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(HUB_MIRROR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_eval_writes_results_without_a_data_dir(
    benchmark: str, fresh_machine: Path, tiny_model_dir: Path
) -> None:
    out = fresh_machine / f"{benchmark}.json"
    code = main(["eval", "--benchmark", benchmark, "--model", str(tiny_model_dir), "--limit", "2",
                 "--max_new_tokens", "4", "--output", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == benchmark and result["n"] == 2
    assert all(item["correct"] is False for item in result["items"])  # a random tiny model


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_bundled_references_pass_their_own_scorer(benchmark: str, fresh_machine: Path) -> None:
    bench = get_benchmark(benchmark)
    examples = load_examples(bench.dataset, bench.split, limit=3)
    limits = SandboxLimits(timeout_s=10.0)
    for example in examples:
        reference = example.response
        if benchmark == "humaneval":  # the canonical body completes the prompt
            reference = example.meta["code_prompt"] + reference
        assert bench.score(example, f"```python\n{reference}\n```", limits).correct, example.meta


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("benchmark", ["gsm_hard", "humaneval"])
def test_acceptance_commands_on_the_default_model(benchmark: str, tmp_path: Path) -> None:
    """The issue's acceptance check, as a user would type it: a fresh process, no data folder."""
    env = {k: v for k, v in os.environ.items() if k not in (DATA_DIR_ENV, HUB_MIRROR_ENV)}
    out = tmp_path / f"{benchmark}.json"
    command = [sys.executable, "-m", "smartfed.cli.main", "eval", "--benchmark", benchmark,
               "--limit", "2", "--max_new_tokens", "48", "--output", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["model"]["kind"] == "base"
