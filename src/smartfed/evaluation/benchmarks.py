"""The benchmark registry: every ``smartfed eval --benchmark`` name, and how each one scores.

Two kinds of benchmark share one interface (:class:`Benchmark`: check the settings and the data
before any model loads, evaluate a loaded target, summarise the result in one line):

* :class:`GenerativeBenchmark`: data (a registered dataset and split) plus two functions, the
  prompt shown to the model and the scoring of one generation against one example. The model
  decodes greedily (:func:`smartfed.evaluation.harness.evaluate_benchmark`).
* :class:`LossBenchmark`: generates nothing; scores the mean answer-token loss on a held-out
  split of any dataset (:func:`smartfed.evaluation.harness.evaluate_loss`).

Adding a benchmark is a :func:`register_benchmark` call, not a branch in the evaluator or the
CLI. Each kind accepts its own options (:data:`GenerativeBenchmark.options`,
:data:`LossBenchmark.options`); an option of the other kind is refused, not silently ignored.

* ``mgsm_zh`` / ``mgsm_en`` / ``gsm8k``: the question as the user turn; the number after the
  last answer marker (else the last number) must equal the gold answer. Accuracy.
* ``gsm_hard``: the question plus the PAL instruction; the generated ``solution()`` is run in the
  sandbox and its return value compared with the target (``abs_tol`` 1e-3, as PAL does).
  Program-execution accuracy.
* ``mgsm_zh_math23k`` / ``gsm_hard_gsm8k_pal``: the target sets' test slices
  (:mod:`smartfed.data.targets`), prompted as the task trains; the generated equation is
  evaluated (MGSM-zh) or the program run in the sandbox (GSM-Hard). Accuracy. ``math23k`` /
  ``gsm8k_pal``: the same scoring on the tasks' in-distribution test splits.
* ``humaneval`` / ``mbpp``: the generated code is run with the benchmark's own tests in the
  sandbox; a sample passes when every assertion holds. pass@1 with greedy decoding.

* ``loss``: mean answer-token loss (prompt masked) and perplexity on ``--data``/``--split``
  (default: the evaluated run's task eval set, else GSM8K test).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from smartfed.data.examples import Example
from smartfed.errors import ConfigError
from smartfed.evaluation.extraction import extract_code, extract_number, numbers_match
from smartfed.evaluation.sandbox import SandboxLimits, run_python

if TYPE_CHECKING:
    from smartfed.evaluation.harness import EvalTarget

PAL_ABS_TOL = 1e-3
EQUATION = re.compile(r"列式[：:]\s*x\s*=\s*([^\n]+)")
DEFAULT_TIMEOUT_S = SandboxLimits().timeout_s  # sandbox wall time per generated program
LOSS_DEFAULT_DATA = "gsm8k"  # held-out data of `loss` when neither --data nor a run is given
LOSS_DEFAULT_SPLIT = "test"
LOSS_DEFAULT_MAX_SEQ_LEN = 512


@dataclass(frozen=True)
class Score:
    """The verdict on one generation."""

    extracted: Any  # the number or program taken from the generation
    correct: bool
    detail: str = ""  # why a program failed, e.g. "timeout" or "AssertionError"


# The EvalSettings fields that only one kind of benchmark uses (see Benchmark.options).
KIND_OPTIONS = ("max_new_tokens", "timeout_s", "data", "split", "max_seq_len")


@dataclass(frozen=True)
class EvalSettings:
    """How to run a benchmark: shared settings, then options of one kind of benchmark.

    An option left ``None`` was not given and takes the benchmark's default; an option given to
    a benchmark of the other kind is refused by :meth:`Benchmark.check`.
    """

    limit: int | None = None  # first N items only
    data_dir: str | None = None  # dataset folder (default: env, bundled)
    batch_size: int = 8
    run_dir: str | None = None  # the run directory evaluated, if any
    # generative benchmarks only
    max_new_tokens: int | None = None  # default: the benchmark's own budget
    timeout_s: float | None = None  # default: DEFAULT_TIMEOUT_S
    # loss benchmarks only
    data: str | None = None  # default: the run's task eval set, else LOSS_DEFAULT_DATA
    split: str | None = None  # default: the run's task eval split, else LOSS_DEFAULT_SPLIT
    max_seq_len: int | None = None  # default: LOSS_DEFAULT_MAX_SEQ_LEN

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_new_tokens", "max_seq_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        t = self.timeout_s
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ConfigError(f"--timeout_s must be a finite number > 0, got {t}")

    def given(self) -> list[str]:
        """The kind-specific options that were set (not ``None``), in declaration order."""
        return [name for name in KIND_OPTIONS if getattr(self, name) is not None]


class Benchmark(ABC):
    """One ``smartfed eval --benchmark`` name: checks its settings, evaluates, summarises.

    Subclasses are frozen dataclasses with at least ``name``, ``description`` and ``metric``
    (the name of the aggregate ``value``, e.g. "accuracy", "pass@1" or "loss").
    """

    name: str
    description: str
    metric: str
    kind: ClassVar[str]  # "generative" or "loss"
    options: ClassVar[tuple[str, ...]]  # the KIND_OPTIONS this kind accepts

    def check(self, settings: EvalSettings) -> None:
        """Refuse options of another kind and missing data: everything before a model loads."""
        for option in settings.given():
            if option not in self.options:
                kinds = sorted(
                    {type(b).kind for b in BENCHMARKS.values() if option in type(b).options}
                )
                raise ConfigError(
                    f"--{option} applies only to {' and '.join(kinds)} benchmarks; "
                    f"{self.name} {self.does}"
                )
        self.check_data(settings)

    @property
    @abstractmethod
    def does(self) -> str:
        """What it does, to end "--x applies only to ... benchmarks; NAME ..." messages."""

    @abstractmethod
    def check_data(self, settings: EvalSettings) -> None:
        """Raise a one-line error when the data to evaluate on cannot be found."""

    @abstractmethod
    def evaluate(
        self, target: EvalTarget, settings: EvalSettings, *, progress: bool = True
    ) -> dict[str, Any]:
        """The JSON result (``benchmark``, ``metric``, ``value``, ``n``, ..., ``items``)."""

    @abstractmethod
    def summary(self, result: dict[str, Any]) -> str:
        """One line for people, e.g. "accuracy 0.4200 (105/250) on mgsm_zh"."""


@dataclass(frozen=True, kw_only=True)
class GenerativeBenchmark(Benchmark):
    """Prompts the model, decodes greedily and scores each generation against its example."""

    name: str
    description: str
    dataset: str
    split: str
    metric: str  # name of the aggregate, e.g. "accuracy" or "pass@1"
    prompt: Callable[[Example], str]
    score: Callable[[Example, str, SandboxLimits], Score]
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)

    kind: ClassVar[str] = "generative"
    options: ClassVar[tuple[str, ...]] = ("max_new_tokens", "timeout_s")

    @property
    def does(self) -> str:
        return f"generates answers to its own data ({self.dataset}/{self.split})"

    def check_data(self, settings: EvalSettings) -> None:
        from smartfed.data.registry import load_examples

        # Loads what evaluate() will load (local file, bundled subset or hub copy), so a missing
        # dataset fails before the model is loaded.
        load_examples(self.dataset, self.split, data_dir=settings.data_dir, limit=settings.limit)

    def evaluate(
        self, target: EvalTarget, settings: EvalSettings, *, progress: bool = True
    ) -> dict[str, Any]:
        from smartfed.evaluation.harness import evaluate_benchmark

        timeout_s = DEFAULT_TIMEOUT_S if settings.timeout_s is None else settings.timeout_s
        return evaluate_benchmark(
            target,
            self,
            limit=settings.limit,
            data_dir=settings.data_dir,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            sandbox=SandboxLimits(timeout_s=timeout_s),
            progress=progress,
        )

    def summary(self, result: dict[str, Any]) -> str:
        interval = result.get("interval_95")
        ci = f", 95% CI {interval[0]:.3f}-{interval[1]:.3f}" if interval else ""
        return (
            f"{result['metric']} {result['value']:.4f} ({result['correct']}/{result['n']}{ci}) "
            f"on {self.name}"
        )


@dataclass(frozen=True, kw_only=True)
class LossBenchmark(Benchmark):
    """Scores the mean answer-token loss on a held-out split; generates nothing."""

    name: str
    description: str
    metric: str = "loss"

    kind: ClassVar[str] = "loss"
    options: ClassVar[tuple[str, ...]] = ("data", "split", "max_seq_len")

    @property
    def does(self) -> str:
        return "scores held-out loss and generates nothing"

    def data_source(self, settings: EvalSettings) -> tuple[str, str]:
        """(dataset, split): ``--data``, else the evaluated run's task eval set, else GSM8K."""
        if settings.data:
            return settings.data, settings.split or LOSS_DEFAULT_SPLIT
        if settings.run_dir:
            from smartfed.data.tasks import get_task
            from smartfed.engine.rundir import RunDirectory

            task = get_task(RunDirectory(settings.run_dir).read_config("--run")["task"])
            return task.eval_dataset, settings.split or task.eval_split
        return LOSS_DEFAULT_DATA, settings.split or LOSS_DEFAULT_SPLIT

    def check_data(self, settings: EvalSettings) -> None:
        from smartfed.data.registry import load_examples

        dataset, split = self.data_source(settings)
        if "/" not in dataset and not dataset.endswith(".jsonl"):  # a registered dataset
            load_examples(dataset, split, data_dir=settings.data_dir, limit=settings.limit)

    def evaluate(
        self, target: EvalTarget, settings: EvalSettings, *, progress: bool = True
    ) -> dict[str, Any]:
        from smartfed.evaluation.harness import evaluate_loss

        dataset, split = self.data_source(settings)
        return evaluate_loss(
            target,
            dataset,
            split,
            limit=settings.limit,
            data_dir=settings.data_dir,
            batch_size=settings.batch_size,
            max_seq_len=settings.max_seq_len or LOSS_DEFAULT_MAX_SEQ_LEN,
            progress=progress,
            name=self.name,
            description=self.description,
        )

    def summary(self, result: dict[str, Any]) -> str:
        return (
            f"loss {result['value']:.4f} (ppl {result['perplexity']:.2f}) on "
            f"{result['dataset']}/{result['split']}, {result['n']} examples, "
            f"{result['tokens']} answer tokens"
        )


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        known = ", ".join(sorted(BENCHMARKS))
        raise ConfigError(f"unknown benchmark {name!r}; known benchmarks: {known}") from None


def benchmark_names() -> list[str]:
    return sorted(BENCHMARKS)


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
        GenerativeBenchmark(
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
    GenerativeBenchmark(
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


# ------------------------------------------------------------------------------ target sets
# The paper's benchmarks as the tasks' target sets (smartfed.data.targets): the prompt is the
# training format's, so a model answers the way it was trained to.


def _score_equation(example: Example, generation: str, _: SandboxLimits) -> Score:
    """MGSM-zh in Math23K's format: the generated ``列式：x=...`` equation is evaluated."""
    from smartfed.data.arith import ArithmeticEvalError, evaluate

    match = EQUATION.search(generation)
    if match is None:
        return Score(extracted=None, correct=False, detail="no 列式：x=... line")
    try:
        value = evaluate(match.group(1).strip().replace("^", "**"), percent=True)
    except ArithmeticEvalError as exc:
        return Score(extracted=match.group(1), correct=False, detail=f"not arithmetic: {exc}")
    correct = numbers_match(float(value), float(example.meta["answer"]))
    return Score(extracted=value, correct=correct, detail="" if correct else f"= {value!r}")


# The target test slices, then the same scoring on the tasks' in-distribution test splits.
for _name, _what, _score, _budget in (
    ("mgsm_zh_math23k", "MGSM-zh target test slice (cn_math), the generated equation's value",
     _score_equation, 256),
    ("gsm_hard_gsm8k_pal", "GSM-Hard target test slice (math_code), PAL program execution",
     _score_pal, 320),
    ("math23k", "Math23K test (cn_math's in-distribution test), the generated equation's value",
     _score_equation, 256),
    ("gsm8k_pal", "GSM8K test as PAL programs (math_code's in-distribution test), execution",
     _score_pal, 320),
):  # fmt: skip
    register_benchmark(
        GenerativeBenchmark(
            name=_name,
            description=_what,
            dataset=_name,
            split="test",
            metric="accuracy",
            prompt=_question,  # the training format's prompt (PAL prompts hold the instruction)
            score=_score,
            max_new_tokens=_budget,
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
    GenerativeBenchmark(
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
    GenerativeBenchmark(
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


# ------------------------------------------------------------------------------ held-out loss

register_benchmark(
    LossBenchmark(
        name="loss",
        description="mean answer-token loss (prompt masked) on a held-out split",
    )
)
