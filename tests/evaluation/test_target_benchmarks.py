"""The target sets' generative benchmarks and the interval every accuracy is reported with."""

from __future__ import annotations

import pytest

from smartfed.data import load_examples
from smartfed.evaluation.benchmarks import get_benchmark
from smartfed.evaluation.sandbox import SandboxLimits
from smartfed.utils.intervals import wilson_interval


def test_mgsm_target_scores_the_generated_equation() -> None:
    bench = get_benchmark("mgsm_zh_math23k")
    example = load_examples("mgsm_zh_math23k", "test", limit=1)[0]
    assert bench.prompt(example) == example.prompt
    # The reference itself is right; the answer line alone does not count, a wrong sum fails.
    assert bench.score(example, example.response, SandboxLimits()).correct
    answer = example.meta["answer"]
    assert not bench.score(example, f"答案是 {answer}。", SandboxLimits()).correct
    wrong = bench.score(example, f"列式：x={answer}+1\n答案是 {answer}。", SandboxLimits())
    assert not wrong.correct and wrong.extracted == answer + 1


def test_gsm_hard_target_runs_the_program() -> None:
    bench = get_benchmark("gsm_hard_gsm8k_pal")
    example = load_examples("gsm_hard_gsm8k_pal", "test", limit=1)[0]
    assert bench.prompt(example).endswith(
        "Write a Python function solution() that returns the answer."
    )
    assert bench.score(example, example.response, SandboxLimits()).correct
    broken = example.response.replace("return", "return 1 +", 1)
    assert not bench.score(example, broken, SandboxLimits()).correct


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (0, 40, 0.0, 0.0876),
        (1, 40, 0.0044, 0.1288),
        (20, 40, 0.3520, 0.6480),
        (40, 40, 0.9124, 1.0),
    ],
)
def test_wilson_interval(correct: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(correct, n)
    assert interval == pytest.approx([low, high], abs=1e-4)
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize("name", ["math23k", "gsm8k_pal"])
def test_in_distribution_references_score_correct(name: str) -> None:
    bench = get_benchmark(name)
    for example in load_examples(name, "test", limit=5):
        assert bench.score(example, example.response, SandboxLimits()).correct, example.prompt
