"""Named federated tasks: which data trains, which data evaluates, and the default pool.

A task is a registry entry, not a code path: adding one is a ``register_task`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from smartfed.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    train_dataset: str
    train_split: str
    eval_dataset: str
    eval_split: str
    default_pool: str
    partition_field: str | None = None  # meta field for dirichlet / natural partitions
    # Generative benchmark (smartfed.evaluation) that gives the task's metric; the eval split
    # above gives the smooth per-round signal (answer-token loss).
    benchmark: str = ""
    # The task's target set (smartfed.data.targets): its other benchmark in the training format,
    # with splits dev (tuning) and test. "" for tasks scored on their own data only.
    target_dataset: str = ""


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task '{spec.name}' is registered twice")
    TASKS[spec.name] = spec
    return spec


def jsonl_task(pattern: str) -> TaskSpec:
    """A user task from JSONL files: ``PATH/{split}.jsonl`` with ``prompt``/``response`` fields,
    trained on split ``train`` and evaluated on split ``test``."""
    return TaskSpec(
        name=pattern,
        description="user JSONL task",
        train_dataset=pattern,
        train_split="train",
        eval_dataset=pattern,
        eval_split="test",
        default_pool="",
    )


def get_task(name: str) -> TaskSpec:
    spec = TASKS.get(name)
    if spec is None and "{split}" in name:
        spec = jsonl_task(name)
    if spec is None:
        raise ConfigError(
            f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}, or a JSONL "
            "pattern like data/{split}.jsonl (prompt/response fields, splits train and test)"
        )
    return spec


register_task(
    TaskSpec(
        name="gsm8k",
        description="English grade-school math word problems with chain-of-thought answers",
        train_dataset="gsm8k",
        train_split="train",
        eval_dataset="gsm8k",
        eval_split="test",
        default_pool="smoke_math_a,smoke_math_b",
        partition_field="answer_bucket",
        benchmark="gsm8k",
    )
)

# The paper's three skill compositions (docs/design.md §2), on the data available offline.
# Math23K here is MWPToolkit's random split (train = its validset.json, eval loss on its
# testset.json); the 18.5K trainset is not available offline.
register_task(
    TaskSpec(
        name="cn_math",
        description="Chinese math: Math23K word problems (equation + answer targets)",
        train_dataset="math23k",
        train_split="train",
        eval_dataset="math23k",
        eval_split="test",
        default_pool="cn_chat,en_math",
        benchmark="mgsm_zh_math23k",  # MGSM-zh's target test slice, in the training format
        target_dataset="mgsm_zh_math23k",
    )
)
# DoIT's own pass@1 harness is not implemented; the metric is MBPP pass@1. Offline, use the task
# cn_code_offline instead.
register_task(
    TaskSpec(
        name="cn_code",
        description="Chinese code instructions: DoIT (needs a local copy, absent offline)",
        train_dataset="doit",
        train_split="train",
        eval_dataset="doit",
        eval_split="test",
        default_pool="cn_chat,en_code",
        benchmark="mbpp",
    )
)
# DoIT is not available offline; zh_code is a few hundred Chinese coding requests.
register_task(
    TaskSpec(
        name="cn_code_offline",
        description=(
            "offline stand-in for cn_code: the coding requests among the Chinese Alpaca "
            "instructions (zh_code)"
        ),
        train_dataset="zh_code",
        train_split="train",
        eval_dataset="zh_code",
        eval_split="test",
        default_pool="cn_chat,en_code",
        benchmark="mbpp",
    )
)
# MathCodeInstruct is not available offline; GSM8K-derived programs replace it.
register_task(
    TaskSpec(
        name="math_code",
        description="math via code: PAL programs built from GSM8K calculator notes",
        train_dataset="gsm8k_pal",
        train_split="train",
        eval_dataset="gsm8k_pal",
        eval_split="test",
        default_pool="en_math,en_code",
        benchmark="gsm_hard_gsm8k_pal",  # GSM-Hard's target test slice, in the training format
        target_dataset="gsm_hard_gsm8k_pal",
    )
)
