"""What the result scripts of ``benchmarks/`` share (no torch): reading their JSON inputs with
a one-line failure, MiB as text, the loss targets the paper's claims are stated against, and the
generative accuracy of final models pooled over seeds.

The scripts import this module, never each other: ``reference_table.py`` writes the targets,
``claims.py`` quotes their definitions, ``routers_pareto.py`` uses ``T_fedit``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.bench.stats import REFERENCE, TARGET_FACTOR
from smartfed.utils.intervals import wilson_interval

MERGE = "merge"  # the entry that merges the pool and trains nothing
INF = "inf"  # a ratio whose entry reached the target at round 0 (0 rounds, 0 bytes); JSON-safe
# The target re-run's reference entries (benchmarks/target_all.sh's seeds stage, 3 seeds each);
# the other folders beside them are seed-0 studies (the ablation, the defaults' grid).
TARGET_ENTRIES = ("fedit", "smartfed", "fed_sb_r26", "fedit_r1", "smartfed_paper", "fedit_r2",
                  "ffa_lora", "ffa_lora_r2", "fedit_bf16", "fed_sb_r31", "pool_bridge", "mole",
                  "merge", "smartfed_residual_r1", "smartfed_pool_v2")  # fmt: skip
TARGET_TEXT = {
    "T_merge": "merge's mean final loss",
    "T_half": "halfway from merge's to FedIT's mean final loss: merge + (FedIT - merge) / 2",
    "T_fedit": f"{TARGET_FACTOR} x FedIT's mean final loss",
}
TARGET_NEEDS = {"T_merge": (MERGE,), "T_half": (MERGE, REFERENCE), "T_fedit": (REFERENCE,)}


# The targets of the target-set tables: how far a run gets of FedIT's best gain on the target
# curve, from round 0. Gains, not ratios of losses: the round-0 loss is far from zero.
GAIN_TARGETS = {"T50": 0.5, "T90": 0.9}
GAIN_TARGET_TEXT = {
    name: f"round-0 target loss minus {int(share * 100)} % of FedIT's best gain on that curve"
    for name, share in GAIN_TARGETS.items()
}


def gain_targets(reference_curve: list[tuple[int, float, int]]) -> dict[str, float] | None:
    """``{"T50": ..., "T90": ...}`` from the reference run's (round, loss, bytes) curve: its
    round-0 loss minus that share of its best gain (round 0 minus its lowest loss); None without
    a round 0 or a gain."""
    if not reference_curve or reference_curve[0][0] != 0:
        return None
    start = reference_curve[0][1]
    gain = start - min(loss for _, loss, _ in reference_curve)
    if gain <= 0:
        return None
    return {name: start - share * gain for name, share in GAIN_TARGETS.items()}


def first_reach(curve: list[tuple[int, float, int]], target: float) -> tuple[int, int] | None:
    """(round, cumulative bytes) where ``curve`` first reaches ``target`` or lower; None if
    it never does."""
    return next(((rnd, sent) for rnd, loss, sent in curve if loss <= target), None)


def grid_edge(grid: list[dict[str, Any]], chosen: dict[str, Any] | None) -> str | None:
    """The end of its grid that tuning chose, "lowest" or "highest", for a grid of three or
    more values of one numeric setting (the best value may lie beyond it); else None."""
    if chosen is None or len(grid) < 3 or len(chosen) != 1:
        return None
    ((name, value),) = chosen.items()
    values = [row["point"].get(name) for row in grid]
    if any(len(row["point"]) != 1 for row in grid) or not all(
        isinstance(v, int | float) for v in [*values, value]
    ):
        return None
    if value == min(values):
        return "lowest"
    return "highest" if value == max(values) else None


def read_json(path: Path) -> Any:
    """A result file's content; a file that is not JSON stops the script with one line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}: not valid JSON ({error})") from None


def mib(value: float) -> str:
    """Bytes as MiB with two decimals and thousands separators."""
    return f"{value / 2**20:,.2f}"


def per_round_text(entry: dict[str, Any]) -> str:
    """A table entry's MiB a round, and its one-off MiB beside it where it has any
    (``setup_bytes``: Fed-SB's broadcast of its frozen A and B before round 1)."""
    text = mib(entry["bytes_per_round"])
    if entry.get("setup_bytes"):
        text += f" (+ {mib(entry['setup_bytes'])} once)"
    return text


# A final model's greedy accuracy, written by benchmarks/final_evals.sh into its run folder.
ACCURACY_FILES = {"target": "accuracy_target.json", "test": "accuracy_test.json"}
# Accuracy at or below this is "at the floor": a +10-point difference between methods is then
# below what a few hundred items can resolve.
FLOOR_ACCURACY = 0.05


def pooled_accuracy(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``smartfed eval`` accuracy results of one entry's seed runs pooled: correct and n summed,
    the share and its 95 % Wilson interval; None without any."""
    if not results:
        return None
    correct = sum(int(r["correct"]) for r in results)
    n = sum(int(r["n"]) for r in results)
    # At the floor, whether a model still writes a usable answer (an equation that evaluates, a
    # program that returns a number) separates the methods where accuracy cannot.
    numeric = None
    if all("items" in r for r in results):
        numeric = sum(is_number(item.get("extracted")) for r in results for item in r["items"])
    return {
        "correct": correct,
        "n": n,
        "numeric": numeric,
        "runs": len(results),
        "value": correct / n if n else None,
        "interval_95": wilson_interval(correct, n),
        "benchmark": sorted({str(r.get("benchmark")) for r in results}),
    }


def is_number(value: Any) -> bool:
    """An extracted answer that is a number (not a program, an unparsed string or None)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def accuracy_text(accuracy: dict[str, Any] | None) -> str:
    """``3/256 (1.2 %; 95 % 0.4-3.4 %; 201 numeric)``, or – without a result; the numeric count
    only where every pooled result kept its items."""
    if not accuracy or not accuracy["n"]:
        return "–"
    low, high = accuracy["interval_95"]
    numeric = accuracy.get("numeric")
    return (
        f"{accuracy['correct']}/{accuracy['n']} ({accuracy['value']:.1%}; "
        f"95 % {low:.1%}–{high:.1%}{'' if numeric is None else f'; {numeric} numeric'})"
    )
