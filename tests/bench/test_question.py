"""smartfed.bench.question: the target re-run's question, each half and each way it can go."""

from __future__ import annotations

import pytest

from smartfed.bench.question import BYTES_FACTOR, KNOWLEDGE_FREE, answer, equal_bytes_rivals

MIB = 2**20


def _entry(losses: list[float], per_round: float, curve: list[tuple[int, float, float]] = ()):
    """A reference_table entry: final losses over seeds, bytes a round, seed-mean curve."""
    n = len(losses)
    mean = sum(losses) / n
    std = (sum((v - mean) ** 2 for v in losses) / (n - 1)) ** 0.5 if n > 1 else None
    return {
        "final_loss": {"mean": mean, "std": std, "n": n},
        "bytes_per_round": per_round,
        "curve": [{"round": r, "mean": m, "bytes": b} for r, m, b in curve],
    }


FEDIT_CURVE = [(0, 3.0, 0), (1, 1.0, 30 * MIB), (2, 0.6, 60 * MIB), (3, 0.7, 90 * MIB)]


def test_rivals_are_knowledge_free_and_send_at_least_as_much():
    sent = {"smartfed": 1.0, "fedit": 28.0, "fed_sb_r26": 1.0, "fedit_r1": 0.9, "mole": 5.0}
    assert equal_bytes_rivals(sent) == ["fedit", "fed_sb_r26"]  # equal counts; mole reuses
    assert "mole" not in KNOWLEDGE_FREE and "smartfed" not in KNOWLEDGE_FREE


def test_yes_when_better_than_every_rival_and_enough_fewer_bytes():
    ours = [(0, 2.0, 0), (1, 0.55, 0.5 * MIB), (2, 0.5, 1 * MIB)]
    entries = {
        "smartfed": _entry([0.50, 0.51, 0.49], MIB / 2, ours),
        "fedit": _entry([0.70, 0.71, 0.69], 30 * MIB, FEDIT_CURVE),
        "fed_sb_r26": _entry([0.60, 0.61, 0.59], MIB),
        "fedit_r1": _entry([0.40, 0.40, 0.40], MIB / 4),  # better but sends less: no rival
    }
    entries["fed_sb_r26"]["setup_bytes"] = 45 * MIB  # its one-off broadcast of A and B
    result = answer(entries)
    assert result["defaults_final_loss"] == entries["smartfed"]["final_loss"]
    assert [r["entry"] for r in result["rivals"]] == ["fedit", "fed_sb_r26"]
    assert [r["setup_bytes"] for r in result["rivals"]] == [0, 45 * MIB]  # shown beside a round's
    assert all(r["defaults_vs_entry"] == "better" for r in result["rivals"])
    assert result["lower_than_every_rival"] is True
    # FedIT's best is round 2's 0.6 after 60 MiB; ours first at or below it: round 1, 0.5 MiB.
    assert result["bytes"] == {
        "fedit_best": 0.6, "fedit_round": 2, "fedit_bytes": 60 * MIB, "defaults_round": 1,
        "defaults_bytes": 0.5 * MIB, "fewer_by": 120.0, "holds": True,
    }  # fmt: skip
    assert result["holds"] is True


def test_a_tie_is_not_lower():
    entries = {
        "smartfed": _entry([0.50, 0.60, 0.55], MIB, [(0, 2.0, 0), (1, 0.55, MIB)]),
        "fedit": _entry([0.56, 0.57, 0.58], 30 * MIB, FEDIT_CURVE),
    }
    result = answer(entries)
    assert result["rivals"][0]["defaults_vs_entry"] == "tie"
    assert result["lower_than_every_rival"] is False and result["holds"] is False


def test_not_enough_fewer_bytes_or_never_reached():
    fedit = _entry([0.70, 0.71, 0.69], 30 * MIB, FEDIT_CURVE)
    # Reaches FedIT's best after 3 MiB: 20x fewer, below the 30x asked.
    slow = _entry([0.5, 0.5, 0.51], MIB, [(0, 2.0, 0), (1, 0.9, MIB), (3, 0.55, 3 * MIB)])
    result = answer({"smartfed": slow, "fedit": fedit})
    assert result["bytes"]["fewer_by"] == pytest.approx(20.0) and BYTES_FACTOR > 20.0
    assert result["lower_than_every_rival"] is True and result["holds"] is False
    never = _entry([0.5, 0.5, 0.51], MIB, [(0, 2.0, 0), (1, 0.65, MIB)])
    result = answer({"smartfed": never, "fedit": fedit})
    assert result["bytes"]["defaults_round"] is None and result["bytes"]["fewer_by"] is None
    assert result["holds"] is False


def test_undecided_below_two_seeds_unless_already_lost():
    fedit = _entry([0.70], 30 * MIB, FEDIT_CURVE)
    ours = _entry([0.5], MIB, [(0, 2.0, 0), (1, 0.5, MIB / 2)])
    result = answer({"smartfed": ours, "fedit": fedit})
    assert result["rivals"][0]["defaults_vs_entry"] is None
    assert result["lower_than_every_rival"] is None
    assert result["bytes"]["fewer_by"] == pytest.approx(120.0) and result["bytes"]["holds"] is None
    assert result["holds"] is None
    # A rival that already wins on 2+ seeds decides it, whatever else is missing.
    rival = _entry([0.3, 0.31, 0.29], MIB)
    three = _entry([0.5, 0.51, 0.49], MIB, [(0, 2.0, 0), (1, 0.5, MIB / 2)])
    result = answer({"smartfed": three, "fedit": fedit, "fed_sb_r31": rival})
    assert result["lower_than_every_rival"] is False and result["holds"] is False


def test_without_the_defaults_or_fedit():
    assert answer({"fedit": _entry([0.7, 0.7], 30 * MIB, FEDIT_CURVE)}) is None
    result = answer({"smartfed": _entry([0.5, 0.5], MIB)})
    assert result["rivals"] == [] and result["bytes"] is None and result["holds"] is None


def test_reaching_fedits_best_before_training():
    """At round 0 the defaults have sent nothing: "inf" times fewer bytes (a JSON-safe string)."""
    ours = _entry([0.5, 0.5], MIB, [(0, 0.55, 0), (1, 0.5, MIB)])
    result = answer({"smartfed": ours, "fedit": _entry([0.7, 0.7], 30 * MIB, FEDIT_CURVE)})
    assert result["bytes"]["fewer_by"] == "inf" and result["bytes"]["holds"] is True


def test_a_pending_knowledge_free_entry_leaves_the_first_half_open():
    """Its bytes a round are not known yet: it may still be a rival. A reuse method pending does
    not matter, and a rival that already wins decides "no" whatever is pending."""
    ours = [(0, 2.0, 0), (1, 0.5, 0.5 * MIB)]
    entries = {
        "smartfed": _entry([0.50, 0.51, 0.49], MIB / 2, ours),
        "fedit": _entry([0.70, 0.71, 0.69], 30 * MIB, FEDIT_CURVE),
    }
    assert answer(entries)["lower_than_every_rival"] is True
    assert answer(entries, pending=["mole", "fedit"])["lower_than_every_rival"] is True
    waiting = answer(entries, pending=["mole", "fed_sb_r31"])
    assert waiting["lower_than_every_rival"] is None and waiting["holds"] is None
    assert waiting["pending_knowledge_free"] == ["fed_sb_r31"]
    entries["fedit_r1"] = _entry([0.30, 0.31, 0.29], MIB)  # wins: "no" already
    lost = answer(entries, pending=["fed_sb_r31"])
    assert lost["lower_than_every_rival"] is False and lost["holds"] is False
