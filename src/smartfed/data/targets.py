"""Target sets: a task's *other* benchmark, written in the task's own training format.

The paper trains on one dataset and scores on another (cn_math: Math23K -> MGSM-zh; math_code:
-> GSM-Hard). A target set is that benchmark rebuilt so that each item's reference answer looks
like the task's training targets; its answer-token loss then measures whether a method composed
the skill, not whether it learned another author's style. Each target set has two fixed,
disjoint splits: ``dev`` (tuning reads it) and ``test`` (reported, never tuned on).

Target sets are *built* from other datasets (see each builder's module) and the built files ship
inside the package (``bundled/targets/<name>/{dev,test}.jsonl`` and ``build.json`` with the
counts), because the bundled subsets of their sources are too small to rebuild them. A test
rebuilds them from the full data and compares byte for byte (``smartfed data build-targets``
writes them).

Files are JSONL, one ``{"prompt", "response", "meta"}`` object a line, in split order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smartfed.data.examples import Example
from smartfed.data.registry import BUNDLED_DIR, jsonl_records, register_dataset, require_field
from smartfed.errors import ConfigError
from smartfed.utils.io import write_text_atomic

TARGET_SPLITS = ("dev", "test")
TARGETS_DIR = "targets"
# The dev/test draw is part of the set's definition, not of a run: a constant seed.
SPLIT_SEED = 20261206


@dataclass
class TargetBuild:
    """The items a builder kept, in source order, and why the others were skipped."""

    name: str
    examples: list[Example] = field(default_factory=list)
    total: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"{self.name}: kept {len(self.examples)} of {self.total}; skipped {reasons or 0}"


@dataclass(frozen=True)
class TargetSpec:
    """A registered target set: how to build it and how many items each split takes."""

    name: str
    build: Callable[[Path], TargetBuild]  # full source data dir -> kept items
    dev_size: int
    test_size: int | None  # None: every kept item that is not in dev
    description: str

    @property
    def folder(self) -> Path:
        return BUNDLED_DIR / TARGETS_DIR / self.name


TARGETS: dict[str, TargetSpec] = {}


def split_target(examples: Sequence[Example], dev_size: int, test_size: int | None):
    """(dev, test): a seeded draw of ``dev_size`` items, then ``test_size`` of the rest (all of
    them for None), each in source order."""
    if dev_size + (test_size or 0) > len(examples):
        raise ValueError(
            f"{len(examples)} kept items cannot fill dev {dev_size} + test {test_size}"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(examples))
    dev = sorted(int(i) for i in order[:dev_size])
    rest = order[dev_size:] if test_size is None else order[dev_size : dev_size + test_size]
    test = sorted(int(i) for i in rest)
    return [examples[i] for i in dev], [examples[i] for i in test]


def _line(example: Example) -> str:
    record = {"prompt": example.prompt, "response": example.response, "meta": example.meta}
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def build_files(spec: TargetSpec, data_dir: Path) -> dict[str, str]:
    """The shipped files' text (``dev.jsonl``, ``test.jsonl``, ``build.json``) built from the
    full source data in ``data_dir``."""
    built = spec.build(data_dir)
    dev, test = split_target(built.examples, spec.dev_size, spec.test_size)
    report = {
        "name": spec.name,
        "description": spec.description,
        "source_items": built.total,
        "kept": len(built.examples),
        "skipped": dict(sorted(built.skipped.items())),
        "dev": len(dev),
        "test": len(test),
        "unused": len(built.examples) - len(dev) - len(test),
        "split_seed": SPLIT_SEED,
    }
    return {
        "dev.jsonl": "".join(_line(e) + "\n" for e in dev),
        "test.jsonl": "".join(_line(e) + "\n" for e in test),
        "build.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
    }


def write_target(spec: TargetSpec, data_dir: Path, out_dir: Path | None = None) -> Path:
    """Build ``spec`` from ``data_dir`` and write its files (default: the package's folder)."""
    folder = out_dir or spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in build_files(spec, data_dir).items():
        write_text_atomic(folder / name, text)
    return folder


def read_target_file(path: Path, split: str) -> Iterator[Example]:
    """Examples of one target-set file (``prompt``, ``response``, ``meta`` per line)."""
    for where, record in jsonl_records(path):
        prompt = require_field(record, "prompt", where, None, kind=str)
        response = require_field(record, "response", where, None, kind=str)
        meta = require_field(record, "meta", where, None, kind=dict)
        yield Example(prompt=prompt, response=response, meta=meta)


def register_target(spec: TargetSpec, meta_fields: Sequence[str]) -> TargetSpec:
    """Register ``spec`` as a dataset with splits ``dev`` and ``test`` read from the package."""
    if spec.name in TARGETS:
        raise ValueError(f"target set {spec.name!r} is registered twice")
    TARGETS[spec.name] = spec
    sizes = {"dev": spec.dev_size}
    if spec.test_size is not None:
        sizes["test"] = spec.test_size
    register_dataset(
        spec.name,
        splits={s: f"{TARGETS_DIR}/{spec.name}/{s}.jsonl" for s in TARGET_SPLITS},
        description=spec.description,
        meta_fields=meta_fields,
        split_sizes=sizes,
        shipped=True,
    )(read_target_file)
    return spec


def target_build_report(name: str) -> dict[str, Any]:
    """The shipped ``build.json`` of target set ``name`` (counts and skip reasons)."""
    spec = TARGETS.get(name)
    if spec is None:
        raise ConfigError(f"unknown target set {name!r}; known: {', '.join(sorted(TARGETS))}")
    return json.loads((spec.folder / "build.json").read_text(encoding="utf-8"))


def target_dev_sources(name: str) -> set[str]:
    """Prompts of the task's own eval data that are the same questions as target ``name``'s
    dev items (their ``source_prompt``): an in-distribution test leaves them out, since tuning
    reads the dev slice."""
    from smartfed.data.registry import load_examples

    return {
        e.meta["source_prompt"] for e in load_examples(name, "dev") if "source_prompt" in e.meta
    }


def user_target_examples(pattern: str, split: str, limit: int | None = None) -> list[Example]:
    """A user's target set: ``PATH/{split}.jsonl`` with ``prompt``/``response`` fields."""
    from smartfed.data.registry import load_jsonl

    if "{split}" not in pattern:
        raise ConfigError(
            f"--target_data {pattern!r}: expected a pattern with {{split}}, e.g. "
            "data/target/{split}.jsonl (files dev.jsonl and test.jsonl)"
        )
    path = Path(os.path.expanduser(pattern.replace("{split}", split)))
    if not path.is_file():
        raise ConfigError(f"--target_data: {path} not found (split {split!r} of {pattern})")
    return load_jsonl(path, "prompt", "response", (), limit=limit)
