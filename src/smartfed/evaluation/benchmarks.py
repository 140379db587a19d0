"""The benchmark registry: how each benchmark prompts, what it extracts and how it scores.

A benchmark is data (a registered dataset and split) plus three functions: the prompt shown to
the model, and the scoring of one generation against one example. Adding one is a
:func:`register_benchmark` call, not a branch in the evaluator.

* ``mgsm_zh`` / ``mgsm_en`` / ``gsm8k``: the question as the user turn; the number after the
  last answer marker (else the last number) must equal the gold answer. Accuracy.
* ``gsm_hard``: the question plus the PAL instruction; the generated ``solution()`` is run in the
  sandbox and its return value compared with the target (``abs_tol`` 1e-3, as PAL does).
  Program-execution accuracy.
* ``humaneval`` / ``mbpp``: the generated code is run with the benchmark's own tests in the
  sandbox; a sample passes when every assertion holds. pass@1 with greedy decoding.

The ``loss`` benchmark (answer-token loss on any dataset split) lives in
:mod:`smartfed.evaluation.harness`: it generates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smartfed.data.examples import Example
from smartfed.errors import ConfigError
from smartfed.evaluation.extraction import extract_code, extract_number, numbers_match
from smartfed.evaluation.sandbox import SandboxLimits, run_python

PAL_ABS_TOL = 1e-3


@dataclass(frozen=True)
class Score:
    """The verdict on one generation."""

    extracted: Any  # the number or program taken from the generation
    correct: bool
    detail: str = ""  # why a program failed, e.g. "timeout" or "AssertionError"


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    dataset: str
    split: str
    metric: str  # name of the aggregate, e.g. "accuracy" or "pass@1"
    prompt: Callable[[Example], str]
    score: Callable[[Example, str, SandboxLimits], Score]
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS or benchmark.name == "loss":
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        known = ", ".join([*sorted(BENCHMARKS), "loss"])
        raise ConfigError(f"unknown benchmark {name!r}; known benchmarks: {known}") from None


def benchmark_names() -> list[str]:
    return [*sorted(BENCHMARKS), "loss"]


# ------------------------------------------------------------------------------ maths, by answer


def _question(example: Example) -> str:
    return example.prompt


def _score_number(example: Example, generation: str, _: SandboxLimits) -> Score:
    predicted = extract_number(generation)
    return Score(
        extracted=predicted, correct=numbers_match(predicted, float(example.meta["answer"]))
    )


for _name, _dataset, _what in (
    ("mgsm_zh", "mgsm_zh", "MGSM Chinese (250 problems), answer accuracy"),
    ("mgsm_en", "mgsm_en", "MGSM English (250 problems), answer accuracy"),
    ("gsm8k", "gsm8k", "GSM8K test (1,319 problems), answer accuracy"),
):
    register_benchmark(
        Benchmark(
            name=_name,
            description=_what,
            dataset=_dataset,
            split="test",
            metric="accuracy",
            prompt=_question,
            score=_score_number,
        )
    )


# ------------------------------------------------------------------------------ programs


def _pal_prompt(example: Example) -> str:
    from smartfed.data.sets.gsm8k_pal import PAL_INSTRUCTION

    return f"{example.prompt}\n\n{PAL_INSTRUCTION}"


def _score_pal(example: Example, generation: str, limits: SandboxLimits) -> Score:
    program = extract_code(generation)
    if "def solution" not in program:
        return Score(extracted=program, correct=False, detail="no solution() function")
    result = run_python(f"{program}\n\nprint(repr(float(solution())))\n", limits)
    if not result.ok:
        return Score(extracted=program, correct=False, detail=f"{result.status}: {result.detail}")
    try:
        value = float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Score(extracted=program, correct=False, detail="solution() printed no number")
    gold = float(example.meta["answer"])
    correct = math.isfinite(value) and math.isclose(value, gold, rel_tol=0, abs_tol=PAL_ABS_TOL)
    return Score(extracted=value, correct=correct, detail="" if correct else f"returned {value!r}")


register_benchmark(
    Benchmark(
        name="gsm_hard",
        description="GSM-Hard (1,319 problems), PAL program execution accuracy",
        dataset="gsm_hard",
        split="test",
        metric="accuracy",
        prompt=_pal_prompt,
        score=_score_pal,
        max_new_tokens=320,
    )
)


def _run_tests(program: str, tests: str, limits: SandboxLimits) -> Score:
    result = run_python(f"{program}\n\n{tests}\n", limits)
    detail = "" if result.ok else f"{result.status}: {result.detail}"
    return Score(extracted=program, correct=result.ok, detail=detail)


def _humaneval_prompt(example: Example) -> str:
    return (
        "Complete the following Python function. Reply with the complete function in a "
        f"```python code block.\n\n```python\n{example.prompt}```"
    )


def _score_humaneval(example: Example, generation: str, limits: SandboxLimits) -> Score:
    code = extract_code(generation)
    entry_point = example.meta["entry_point"]
    # A reply that restates the function replaces the prompt's stub; a bare body continues it.
    if f"def {entry_point}" in code:
        program = f"{example.meta['code_prompt']}\n\n{code}"
    else:
        program = example.meta["code_prompt"] + code
    return _run_tests(program, f"{example.meta['test']}\n\ncheck({entry_point})", limits)


register_benchmark(
    Benchmark(
        name="humaneval",
        description="HumanEval (164 problems), pass@1 with greedy decoding",
        dataset="humaneval",
        split="test",
        metric="pass@1",
        prompt=_humaneval_prompt,
        score=_score_humaneval,
        max_new_tokens=384,
    )
)


def _mbpp_prompt(example: Example) -> str:
    return f"{example.prompt}\nReply with the Python function in a ```python code block."


def _score_mbpp(example: Example, generation: str, limits: SandboxLimits) -> Score:
    program = f"{example.meta.get('test_setup_code') or ''}\n{extract_code(generation)}"
    return _run_tests(program, "\n".join(example.meta["test_list"]), limits)


register_benchmark(
    Benchmark(
        name="mbpp",
        description="MBPP test split (task ids 11-510), pass@1 with greedy decoding",
        dataset="mbpp",
        split="test",
        metric="pass@1",
        prompt=_mbpp_prompt,
        score=_score_mbpp,
        max_new_tokens=320,
    )
)
