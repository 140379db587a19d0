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
    available: bool = True
    unavailable_reason: str = ""


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
    if not spec.available:
        raise ConfigError(f"task '{name}' is not available yet: {spec.unavailable_reason}")
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
    )
)

# The paper's three skill compositions (DESIGN §2). Their loaders (Math23K, MGSM, DoIT,
# GSM-Hard programs) are the next milestone; until then they are registered but refuse to run
# with a clear reason instead of silently substituting other data.
for _name, _pool, _what in (
    ("cn_math", "cn_chat,en_math", "Math23K train / MGSM-zh eval"),
    ("cn_code", "cn_chat,en_code", "DoIT (absent offline) / HumanEval, MBPP"),
    ("math_code", "en_math,en_code", "GSM8K-derived PAL programs / GSM-Hard eval"),
):
    register_task(
        TaskSpec(
            name=_name,
            description=f"paper task: {_what}",
            train_dataset="",
            train_split="",
            eval_dataset="",
            eval_split="",
            default_pool=_pool,
            available=False,
            unavailable_reason=(
                f"its loaders ({_what}) are not implemented yet; use --task gsm8k meanwhile"
            ),
        )
    )
