"""What ``smartfed bench --methods`` accepts: registered methods and named ablations.

A bench entry is a label, the registered method it runs and the settings it changes. Every
other setting is shared by all entries of one bench (same task, data, partition, seed, rounds
and evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smartfed.errors import ConfigError


@dataclass(frozen=True)
class BenchEntry:
    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


ABLATIONS: dict[str, BenchEntry] = {
    entry.label: entry
    for entry in (
        BenchEntry("smartfed_uniform", "smartfed", {"enable_eeqa": False}, "SmartFed, uniform K"),
        BenchEntry("smartfed_dense", "smartfed", {"dense": True}, "SmartFed, all experts (K = M)"),
        BenchEntry("smartfed_scale1", "smartfed", {"output_scale": "one"}, "SmartFed, c = 1"),
    )
}
REFERENCE = "fedit"  # the method every ratio is taken against
DEFAULT_METHODS = (
    "fedit", "ffa_lora", "fedsa_lora", "merge", "lorahub", "mole", "smartfed",
    "smartfed_uniform", "smartfed_dense", "smartfed_scale1",
)  # fmt: skip


def resolve_entries(names: list[str], data_fraction: float | None = None) -> list[BenchEntry]:
    """Bench entries for ``names``; with ``data_fraction``, add SmartFed on that share of data."""
    from smartfed.methods import get_method, method_names

    entries = []
    for name in names:
        if name in ABLATIONS:
            entries.append(ABLATIONS[name])
        elif name in method_names():
            entries.append(BenchEntry(name, name, {}, get_method(name).summary))
        else:
            known = ", ".join([*method_names(), *ABLATIONS])
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
