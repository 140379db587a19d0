"""Benchmark scoring: canonical solutions pass, wrong ones fail, answers are read correctly."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartfed.data import load_examples
from smartfed.data.examples import Example
from smartfed.errors import ConfigError
from smartfed.evaluation.benchmarks import (
    BENCHMARKS,
    KIND_OPTIONS,
    EvalSettings,
    GenerativeBenchmark,
    LossBenchmark,
    benchmark_names,
    get_benchmark,
    register_benchmark,
)
from smartfed.evaluation.harness import evaluate_benchmark
from smartfed.evaluation.sandbox import SandboxLimits

LIMITS = SandboxLimits(timeout_s=10.0)


def test_every_issue_benchmark_is_registered():
    assert set(benchmark_names()) >= {
        "mgsm_zh", "mgsm_en", "gsm8k", "gsm_hard", "humaneval", "mbpp", "loss"
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'; known benchmarks: "):
        get_benchmark("nope")


def test_every_benchmark_is_of_one_kind_with_its_own_options():
    kinds = {name: type(get_benchmark(name)) for name in benchmark_names()}
    assert kinds["loss"] is LossBenchmark
    assert {k for n, k in kinds.items() if n != "loss"} == {GenerativeBenchmark}
    # every kind-specific option belongs to exactly one kind
    assert sorted(GenerativeBenchmark.options + LossBenchmark.options) == sorted(KIND_OPTIONS)
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(LossBenchmark(name="loss", description="again"))
    assert isinstance(BENCHMARKS["loss"], LossBenchmark)


def test_settings_name_only_the_options_given():
    assert EvalSettings().given() == []
    assert EvalSettings(split="test", timeout_s=3.0, limit=2).given() == ["timeout_s", "split"]


def test_the_options_of_the_other_kind_are_refused():
    get_benchmark("loss").check(EvalSettings(data="x.jsonl", split="a", max_seq_len=8))
    with pytest.raises(ConfigError, match="--data applies only to loss benchmarks; gsm8k "):
        get_benchmark("gsm8k").check(EvalSettings(data="x.jsonl"))
    with pytest.raises(ConfigError, match="--max_new_tokens applies only to generative"):
        get_benchmark("loss").check(EvalSettings(max_new_tokens=3))


def test_the_generative_evaluator_refuses_the_loss_benchmark():
    with pytest.raises(ConfigError, match="'loss' is not generative"):
        evaluate_benchmark(None, "loss")  # type: ignore[arg-type]


def test_math_answers_are_scored_by_number():
    bench = get_benchmark("mgsm_zh")
    example = Example(prompt="问题", response="答案是 18。", meta={"answer": 18})
    assert bench.score(example, "每天剩下 16-3-4=9 个鸡蛋，9*2=18。答案是 18。", LIMITS).correct
    assert not bench.score(example, "答案是 9。", LIMITS).correct
    assert bench.prompt(example) == "问题"


def _pal(code: str) -> str:
    return f"Here is the program:\n```python\n{code}\n```"


def test_gsm_hard_runs_the_program_and_compares_with_tolerance():
    bench = get_benchmark("gsm_hard")
    example = Example(prompt="q", response="", meta={"answer": 2.5})
    right = bench.score(example, _pal("def solution():\n    return 5 / 2"), LIMITS)
    assert right.correct and right.extracted == 2.5
    close = bench.score(example, _pal("def solution():\n    return 2.5004"), LIMITS)
    assert close.correct  # within PAL's 1e-3
    wrong = bench.score(example, _pal("def solution():\n    return 3"), LIMITS)
    assert not wrong.correct and "returned 3.0" in wrong.detail
    crash = bench.score(example, _pal("def solution():\n    return 1 / 0"), LIMITS)
    assert not crash.correct and "ZeroDivisionError" in crash.detail
    missing = bench.score(example, "The answer is 2.5", LIMITS)
    assert not missing.correct and missing.detail == "no solution() function"


def test_gsm_hard_hostile_program_is_a_failed_sample_not_a_crash():
    bench = get_benchmark("gsm_hard")
    example = Example(prompt="q", response="", meta={"answer": 1.0})
    looping = bench.score(
        example, _pal("def solution():\n    while True:\n        pass"), SandboxLimits(timeout_s=2)
    )
    assert not looping.correct and looping.detail.startswith("timeout")


def test_humaneval_canonical_solutions_pass_and_stubs_fail(needs_data: Path):
    bench = get_benchmark("humaneval")
    for example in load_examples("humaneval", "test", data_dir=needs_data, limit=12):
        body = example.response  # canonical_solution: the indented body
        assert bench.score(example, f"```python\n{body}\n```", LIMITS).correct, example.meta
        whole = example.meta["code_prompt"] + body
        assert bench.score(example, f"```python\n{whole}```", LIMITS).correct
        stub = f"```python\ndef {example.meta['entry_point']}(*args):\n    return None\n```"
        assert not bench.score(example, stub, LIMITS).correct


def test_mbpp_reference_code_passes_and_wrong_code_fails(needs_data: Path):
    bench = get_benchmark("mbpp")
    for example in load_examples("mbpp", "test", data_dir=needs_data, limit=12):
        assert bench.score(example, f"```python\n{example.response}\n```", LIMITS).correct
        assert not bench.score(example, "```python\npass\n```", LIMITS).correct
        assert "Your code should pass" in bench.prompt(example)


def test_gsm_hard_reference_programs_pass(needs_data: Path):
    bench = get_benchmark("gsm_hard")
    examples = load_examples("gsm_hard", "test", data_dir=needs_data, limit=12)
    passed = sum(bench.score(ex, f"```python\n{ex.response}\n```", LIMITS).correct
                 for ex in examples)  # fmt: skip
    assert passed == len(examples)
