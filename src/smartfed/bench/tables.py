"""What the result scripts of ``benchmarks/`` share (no torch): reading their JSON inputs with
a one-line failure, MiB as text, and the loss targets the paper's claims are stated against.

The scripts import this module, never each other: ``reference_table.py`` writes the targets,
``claims.py`` quotes their definitions, ``routers_pareto.py`` uses ``T_fedit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.bench.stats import REFERENCE, TARGET_FACTOR

MERGE = "merge"  # the entry that merges the pool and trains nothing
TARGET_TEXT = {
    "T_merge": "merge's mean final loss",
    "T_half": "halfway from merge's to FedIT's mean final loss: merge + (FedIT - merge) / 2",
    "T_fedit": f"{TARGET_FACTOR} x FedIT's mean final loss",
}
TARGET_NEEDS = {"T_merge": (MERGE,), "T_half": (MERGE, REFERENCE), "T_fedit": (REFERENCE,)}


def read_json(path: Path) -> Any:
    """A result file's content; a file that is not JSON stops the script with one line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}: not valid JSON ({error})") from None


def mib(value: float) -> str:
    """Bytes as MiB with two decimals and thousands separators."""
    return f"{value / 2**20:,.2f}"
