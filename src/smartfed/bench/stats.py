"""Comparing bench entries across seeds: the reference entry, spreads, the tie rule, verdicts.

Torch-free (the standard library only), so the result scripts of ``benchmarks/`` and
``smartfed.bench.results`` share it without loading a model stack.

One verdict vocabulary, on a loss (lower is better): :data:`BETTER` (the first entry's mean is
lower beyond the tie margin), :data:`WORSE` (higher beyond it), :data:`TIE` (within it), and
None where either side has fewer than 2 seeds. ``smartfed bench`` (results.json ``vs_fedit`` /
``vs_entries``), ``benchmarks/reference_table.py`` and ``benchmarks/claims.py`` all use these
words.
"""

from __future__ import annotations

import statistics
from typing import Any

REFERENCE = "fedit"  # the entry every ratio and verdict is taken against
TARGET_FACTOR = 1.1  # the "T_fedit" target: this many times FedIT's mean final loss

BETTER, WORSE, TIE = "better", "worse", "tie"
VERDICTS = (BETTER, WORSE, TIE)

TIE_FORMULA = "|mean_a - mean_b| <= std_a + std_b"
# The same rule in two wordings: results.json / results.md of `smartfed bench`, and the
# reference tables (their committed pages quote it as is).
TIE_RULE = (
    "two entries tie when their mean final test eval losses differ by no more than the sum of "
    f"their sample standard deviations across seeds: {TIE_FORMULA} "
    "(no verdict with fewer than 2 seeds)"
)
TIE_RULE_TABLE = (
    f"{TIE_FORMULA} (sample standard deviations over seeds) is a tie; "
    "otherwise the lower mean is better; no verdict (–) with fewer than 2 seeds on either side"
)


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (n - 1; None below 2 values) and n of the values that
    are not None. ``statistics`` rounds the mean and variance correctly (no running sum)."""
    known = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.mean(known) if known else None,
        "std": statistics.stdev(known) if len(known) >= 2 else None,
        "n": len(known),
    }


def spread(values: list[float | None]) -> dict[str, Any]:
    """:func:`mean_std` and the values themselves (None where a seed has no figure)."""
    return {**mean_std(values), "values": list(values)}


def compare_spreads(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a against b under the tie rule: the difference of means, the margin (std_a + std_b) and
    the verdict (None below 2 seeds on either side)."""
    if a.get("mean") is None or b.get("mean") is None:
        return {"difference": None, "margin": None, "verdict": None}
    difference = a["mean"] - b["mean"]
    if a.get("std") is None or b.get("std") is None:
        return {"difference": difference, "margin": None, "verdict": None}
    margin = a["std"] + b["std"]
    word = TIE if abs(difference) <= margin else (BETTER if difference < 0 else WORSE)
    return {"difference": difference, "margin": margin, "verdict": word}


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Only the verdict word of :func:`compare_spreads`."""
    return compare_spreads(a, b)["verdict"]
