"""What ``smartfed bench --methods`` accepts: registered methods and the ablations they declare.

A bench entry is a label, the registered method it runs and the settings it changes. Every
other setting is shared by all entries of one bench (same task, data, partition, seed, rounds
and evaluation). Ablations belong to their method (``FederatedMethod.ablations``), so a new
method brings its own without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smartfed.errors import ConfigError
from smartfed.methods import get_method, method_names


@dataclass(frozen=True)
class BenchEntry:
    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def ablations() -> dict[str, BenchEntry]:
    return {
        ablation.label: BenchEntry(ablation.label, name, ablation.overrides, ablation.description)
        for name in method_names()
        for ablation in get_method(name).ablations
    }


def default_methods() -> list[str]:
    """Every method that joins a default bench (knowledge-free first), then the ablations."""
    chosen = [n for n in method_names() if get_method(n).in_default_bench]
    chosen.sort(key=lambda n: get_method(n).reuses_pool)  # stable: registry order otherwise
    return [*chosen, *(a.label for n in chosen for a in get_method(n).ablations)]


def resolve_entries(names: list[str], data_fraction: float | None = None) -> list[BenchEntry]:
    """Bench entries for ``names``; with ``data_fraction``, add SmartFed on that share of data."""
    known_ablations = ablations()
    entries = []
    for name in names:
        if name in known_ablations:
            entries.append(known_ablations[name])
        elif name in method_names():
            entries.append(BenchEntry(name, name, {}, get_method(name).summary))
        else:
            known = ", ".join([*method_names(), *known_ablations])
            raise ConfigError(f"--methods: unknown method '{name}'; known: {known}")
    if data_fraction is not None:
        if not 0 < data_fraction < 1:
            raise ConfigError(f"--data_fraction must be in (0, 1), got {data_fraction!r}")
        percent = round(data_fraction * 100)
        entries.append(
            BenchEntry(
                f"smartfed_data{percent}",
                "smartfed",
                {"train_fraction": data_fraction},
                f"SmartFed on {percent}% of every client's data (data efficiency)",
            )
        )
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--methods names a method twice: {', '.join(labels)}")
    return entries
