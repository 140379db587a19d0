"""Honest tuning for ``smartfed bench``: ``--sweep SETTING=v1,v2,...`` and ``--seeds 0,1,2``.

Each entry whose method declares every swept setting (and whose own overrides do not fix one)
runs the whole grid with ``eval_split=validation``: the per-round eval loss then comes from a
seeded slice of the training data that no client trains on, and the test split is never read.
The grid point with the lowest final validation loss is chosen (ties: the first in grid order);
the chosen point then runs once per seed with the bench's own eval split (the test split).
Entries that do not declare the setting run untuned, with their defaults, for every seed.

Layout of such a bench folder::

    BENCH_DIR/bench.json                    settings, entries, sweep and seeds
    BENCH_DIR/tune/<label>/<point>/         one run per grid point (validation, first seed)
    BENCH_DIR/<label>/seed<k>/              the chosen point on the test split, seed k
    BENCH_DIR/results.json, results.md      smartfed.bench.results

``<point>`` is ``setting=value`` (several swept settings joined by ``,``), as
:func:`smartfed.bench.layout.point_name` names it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from smartfed.assembly.config import method_settings_index
from smartfed.bench.variants import BenchEntry
from smartfed.engine.config import RunConfig
from smartfed.engine.settings import kind_of
from smartfed.errors import ConfigError
from smartfed.methods.registry import get_method

# Settings a sweep may not vary: the bench's bookkeeping, the seed (that is --seeds), and what
# defines the validation loss itself (a choice across different validation sets means nothing).
NOT_SWEEPABLE = frozenset(
    {"method", "output_dir", "resume", "overwrite", "preset", "seed", "eval_split", "eval_samples",
     "task", "data_dir", "engine", "energy_country", "metric_samples"}
)  # fmt: skip


@dataclass(frozen=True)
class Sweep:
    """Swept settings in the order given, each with its values in the order given."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.axes]

    @property
    def grid(self) -> list[dict[str, Any]]:
        """Every combination, the first axis varying slowest."""
        values = [vals for _, vals in self.axes]
        return [dict(zip(self.names, combo, strict=True)) for combo in itertools.product(*values)]

    def to_record(self) -> list[dict[str, Any]]:
        return [{"setting": name, "values": list(vals)} for name, vals in self.axes]

    def describe(self) -> str:
        return "; ".join(
            f"{name} in {{{', '.join(str(v) for v in vals)}}}" for name, vals in self.axes
        )


def _setting_field(name: str):
    if name in RunConfig.setting_names():
        return RunConfig.field_named(name)
    owners = method_settings_index().get(name)
    if not owners:
        known = sorted({*RunConfig.setting_names(), *method_settings_index()} - NOT_SWEEPABLE)
        raise ConfigError(f"--sweep: unknown setting '{name}'; known settings: {', '.join(known)}")
    return get_method(owners[0]).settings_class.field_named(name)


def _parse_value(item, text: str) -> Any:
    kind, optional = kind_of(item)
    text = text.strip()
    if optional and text.lower() == "none":
        return None
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError(text)
            return lowered == "true"
        value = kind(text)
    except ValueError:
        raise ConfigError(f"--sweep {item.name}: {text!r} is not a {kind.__name__}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--sweep {item.name}: {text!r} is not a finite number")
    if kind is str and ("/" in value or "," in value or not value):
        raise ConfigError(f"--sweep {item.name}: value {text!r} cannot name a folder")
    return value


def parse_sweep(specs: list[str] | None) -> Sweep | None:
    """``["learning_rate=1e-3,1e-2", ...]`` -> a :class:`Sweep` (None when no spec is given)."""
    if not specs:
        return None
    axes: list[tuple[str, tuple[Any, ...]]] = []
    for spec in specs:
        name, sep, values_text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not values_text.strip():
            raise ConfigError(f"--sweep expects SETTING=v1,v2,... (got {spec!r})")
        if name in NOT_SWEEPABLE:
            hint = " (use --seeds)" if name == "seed" else ""
            raise ConfigError(f"--sweep: {name} cannot be swept{hint}")
        item = _setting_field(name)
        if name in (n for n, _ in axes):
            raise ConfigError(f"--sweep names {name} twice")
        values = tuple(_parse_value(item, text) for text in values_text.split(","))
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep {name} lists a value twice: {values_text}")
        axes.append((name, values))
    return Sweep(tuple(axes))


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers (got {text!r})") from None
    if not seeds:
        raise ConfigError("--seeds names no seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds names a seed twice: {text}")
    return seeds


def declares(entry: BenchEntry, name: str) -> bool:
    """Whether ``entry`` can be tuned on ``name``: a shared setting, or one its method
    declares, that the entry's own overrides do not fix (an ablation keeps its value)."""
    if name in entry.overrides:
        return False
    if name in RunConfig.setting_names():
        return True
    return name in get_method(entry.method).settings_class.setting_names()


def untuned_reason(entry: BenchEntry, sweep: Sweep) -> str | None:
    """None when the entry runs the grid, else why it does not."""
    for name in sweep.names:
        if name in entry.overrides:
            return f"the entry fixes {name}={entry.overrides[name]!r}"
        if not declares(entry, name):
            return f"method {entry.method} does not declare {name}"
    return None


def check_sweep(sweep: Sweep, entries: list[BenchEntry]) -> None:
    """Refuse a swept setting that no entry of the bench can be tuned on."""
    for name in sweep.names:
        if not any(declares(e, name) for e in entries):
            methods = ", ".join(dict.fromkeys(e.method for e in entries))
            raise ConfigError(
                f"--sweep: no entry of this bench declares {name} ({methods}); nothing to tune"
            )


def choose(losses: list[float | None]) -> int | None:
    """Index of the lowest finite loss, the first one on ties; None when none is finite."""
    best: int | None = None
    for index, loss in enumerate(losses):
        if loss is None or not math.isfinite(loss):
            continue
        if best is None or loss < losses[best]:  # strict: ties keep the earlier point
            best = index
    return best
