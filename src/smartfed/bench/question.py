"""The question the target re-run answers (torch-free): do SmartFed's defaults end with a lower
target test loss than every knowledge-free baseline that sends at least their bytes a round (a
tie is not lower), and reach FedIT r 32's best target loss with at least ``BYTES_FACTOR`` x
fewer total bytes?

Its input is the entries of ``benchmarks/reference_table.py`` (``final_loss`` spread over
seeds, ``bytes_per_round`` without one-off bytes, the seed-mean ``curve`` with cumulative
bytes); ``benchmarks/gate_table.py`` asks the first half on seed 0 with the same rivals.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from smartfed.bench.stats import BETTER, REFERENCE, verdict
from smartfed.bench.tables import INF

DEFAULTS = "smartfed"  # the entry holding SmartFed's defaults
# Methods that reuse no pool knowledge: FedIT, FFA-LoRA and Fed-SB at their sizes.
KNOWLEDGE_FREE = ("fedit", "fedit_r1", "fedit_r2", "ffa_lora", "ffa_lora_r2", "fedit_bf16",
                  "fed_sb_r26", "fed_sb_r31")  # fmt: skip
BYTES_FACTOR = 30  # "with at least 30x fewer total bytes" than FedIT r 32


def equal_bytes_rivals(bytes_per_round: dict[str, float], defaults: str = DEFAULTS) -> list[str]:
    """The knowledge-free entries of ``bytes_per_round`` that send at least the defaults' bytes a
    round, in KNOWLEDGE_FREE's order."""
    floor = bytes_per_round[defaults]
    return [n for n in KNOWLEDGE_FREE if n in bytes_per_round and bytes_per_round[n] >= floor]


def _first_at_or_below(curve: list[dict[str, Any]], loss: float) -> dict[str, Any] | None:
    return next((point for point in curve if point["mean"] <= loss), None)


def answer(
    entries: dict[str, dict[str, Any]], pending: Iterable[str] = ()
) -> dict[str, Any] | None:
    """Both halves of the question on finished ``entries`` (by name); None without the defaults.

    ``pending``: the entries planned but without a finished seed run yet (their bytes a round
    are not known, so a knowledge-free one may still be a rival).
    ``lower_than_every_rival``: True when the defaults are better (tie rule) than every rival,
    False when some rival ties or wins, None when a verdict is missing (fewer than 2 seeds) or a
    knowledge-free entry is pending, and no rival already wins or ties. ``bytes``: where the
    defaults' seed-mean curve first reaches FedIT's best (the lowest point of its seed-mean
    curve) against where FedIT does, and whether that is ``BYTES_FACTOR`` x fewer (None below 2
    seeds on either side). ``holds``: both (None while either is undecided and neither fails).
    """
    ours = entries.get(DEFAULTS)
    if ours is None:
        return None
    rivals = []
    for name in equal_bytes_rivals({n: e["bytes_per_round"] for n, e in entries.items()}):
        word = verdict(ours["final_loss"], entries[name]["final_loss"])
        rivals.append({
            "entry": name,
            "bytes_per_round": entries[name]["bytes_per_round"],
            "setup_bytes": entries[name].get("setup_bytes", 0),
            "final_loss": entries[name]["final_loss"],
            "defaults_vs_entry": word,
        })  # fmt: skip
    words = [r["defaults_vs_entry"] for r in rivals]
    unfinished = sorted(set(pending) & set(KNOWLEDGE_FREE) - entries.keys())
    if any(w is not None and w != BETTER for w in words):
        lower = False
    elif None in words or unfinished:
        lower = None
    else:
        lower = True  # (also with no rival: nothing sends as much and beats them)
    result: dict[str, Any] = {
        "defaults_final_loss": ours["final_loss"],
        "rivals": rivals,
        "lower_than_every_rival": lower,
        "pending_knowledge_free": unfinished,
        "bytes": None,
    }
    fedit = entries.get(REFERENCE)
    if fedit and fedit.get("curve"):
        best = min(fedit["curve"], key=lambda point: point["mean"])
        mine = _first_at_or_below(ours.get("curve") or [], best["mean"])
        factor: float | str | None = None
        if mine is not None:
            factor = INF if mine["bytes"] == 0 else best["bytes"] / mine["bytes"]
        result["bytes"] = {
            "fedit_best": best["mean"],
            "fedit_round": best["round"],
            "fedit_bytes": best["bytes"],
            "defaults_round": mine and mine["round"],
            "defaults_bytes": mine and mine["bytes"],
            "fewer_by": factor,
            # Like the tie rule, no verdict below 2 seeds on either side.
            "holds": factor is not None and (factor == INF or factor >= BYTES_FACTOR)
            if min(ours["final_loss"]["n"], fedit["final_loss"]["n"]) >= 2
            else None,
        }
    fewer = result["bytes"] and result["bytes"]["holds"]
    if lower is False or fewer is False:
        result["holds"] = False
    elif lower is None or fewer is None:
        result["holds"] = None
    else:
        result["holds"] = True
    return result
