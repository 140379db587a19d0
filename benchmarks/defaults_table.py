"""SmartFed's defaults re-decided on the target dev slice (``benchmarks/target_all.sh``'s
defaults and finalists stages): router design x routing x learning rate.

    .venv/bin/python benchmarks/defaults_table.py              # results/target/defaults.md, .json
    .venv/bin/python benchmarks/defaults_table.py --finalists  # "TASK ENTRY RATE" lines

The grid is every router design within the bytes rule (at most 1/30 of FedIT r32's bytes a
round) x dense / K = 32 / K = 32 with EEQA; each cell is an entry folder of the target re-run,
tuned over three rates on the target's dev slice with seed 0. Only dev-slice losses choose:
1. Seed 0: each cell's lowest dev loss over its rates, on both tasks; a cell's score is the mean
   over the tasks of its dev loss over the defaults' (below 1: better than the defaults).
2. Finalists: the defaults and the two best-scoring other cells within the bytes rule. Each runs
   its seed-0 rate with seeds 1 and 2 on the dev slice (``--tune_only``, into
   ``results/target/finalists/seedN/TASK/ENTRY/``).
3. A finalist replaces the defaults only if its 3-seed mean dev loss is lower than theirs on both
   tasks and not a tie under the tie rule; among several, the lowest mean score. Otherwise the
   defaults stay. The target test slice is printed beside, never read by a choice.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from smartfed.bench.layout import final_loss, finished_runs, read_run
from smartfed.bench.stats import TIE_RULE_TABLE, compare_spreads, spread
from smartfed.bench.tables import grid_edge, mib, read_json
from smartfed.utils.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "target"
TASKS = ("cn_math", "math_code")
DEFAULTS = "smartfed"
ROUTINGS = ("dense", "K = 32", "K = 32 + EEQA")
# (router design, routing) -> entry folder (reference.sh's names).
CELLS = {
    ("diag_lowrank (defaults)", "dense"): "smartfed",
    ("diag_lowrank (defaults)", "K = 32"): "smartfed_k32",
    ("diag_lowrank (defaults)", "K = 32 + EEQA"): "smartfed_k32_eeqa",
    ("lowrank r 1 (on x alone)", "dense"): "smartfed_router_x",
    ("lowrank r 1 (on x alone)", "K = 32"): "smartfed_router_x_k32",
    ("lowrank r 1 (on x alone)", "K = 32 + EEQA"): "smartfed_router_x_k32_eeqa",
    ("diagonal", "dense"): "smartfed_diagonal",
    ("diagonal", "K = 32"): "smartfed_diagonal_k32",
    ("diagonal", "K = 32 + EEQA"): "smartfed_diagonal_k32_eeqa",
}
BYTES_RULE = 30  # a cell may send at most FedIT r32's bytes a round over this
BYTES_REFERENCE = "fedit"
CHALLENGERS = 2
FINALIST_SEEDS = (1, 2)


def bench_choice(bench_dir: Path) -> dict[str, Any] | None:
    """The seed-0 tuning of one bench folder: the chosen point, its dev loss and bytes a round,
    or None while the tuning has not finished."""
    path = bench_dir / "results.json"
    if not path.is_file():
        return None
    results = read_json(path)
    ((label, method),) = results["methods"].items()  # one entry a folder
    chosen = method.get("chosen")
    row = next((r for r in method.get("grid") or [] if r["point"] == chosen), None)
    if row is None or row.get("target_dev_loss") is None:
        return None
    tune_rows = read_run(bench_dir / row["run_dir"])["rows"]
    last = tune_rows[-1] if tune_rows else {"bytes_up": 0, "bytes_down": 0}
    return {
        "label": label,
        "chosen": chosen,
        "grid_edge": grid_edge(method.get("grid") or [], chosen),
        "dev_loss": row["target_dev_loss"],
        "bytes_per_round": last["bytes_up"] + last["bytes_down"],
    }


def seed0_test_loss(bench_dir: Path, label: str) -> float | None:
    """The seed-0 target test loss (shown, never used to choose)."""
    runs = finished_runs(bench_dir, label, [0])
    if not runs:
        return None
    return final_loss(read_run(runs[0])["summary"], initial_if_untrained=True, metric="target_loss")


def task_cells(root: Path, task: str) -> dict[str, dict[str, Any] | None]:
    """entry -> its seed-0 choice (None while unfinished), with the finalist seeds' dev losses."""
    out: dict[str, dict[str, Any] | None] = {}
    for entry in CELLS.values():
        choice = bench_choice(root / task / entry)
        if choice is not None:
            losses = [choice["dev_loss"]]
            for seed in FINALIST_SEEDS:
                extra = bench_choice(root / "finalists" / f"seed{seed}" / task / entry)
                losses.append(extra["dev_loss"] if extra else None)
            choice["dev_seeds"] = spread(losses)
            choice["test_loss_seed0"] = seed0_test_loss(root / task / entry, choice["label"])
        out[entry] = choice
    return out


def bytes_cap(root: Path, task: str) -> int | None:
    """FedIT r32's bytes a round over BYTES_RULE (from its seed-0 run), or None."""
    runs = finished_runs(root / task / BYTES_REFERENCE, BYTES_REFERENCE, [0])
    if not runs:
        return None
    last = read_run(runs[0])["rows"][-1]
    return (last["bytes_up"] + last["bytes_down"]) // BYTES_RULE


def scores(cells: dict[str, dict[str, dict[str, Any] | None]]) -> dict[str, float]:
    """entry -> mean over the tasks of its seed-0 dev loss over the defaults' (every task)."""
    out = {}
    for entry in CELLS.values():
        ratios = []
        for task in TASKS:
            ours, defaults = cells[task].get(entry), cells[task].get(DEFAULTS)
            if ours is None or defaults is None:
                break
            ratios.append(ours["dev_loss"] / defaults["dev_loss"])
        else:
            out[entry] = statistics.fmean(ratios)
    return out


def within_bytes(cells: dict[str, dict[str, dict[str, Any] | None]], caps: dict[str, int | None],
                 entry: str) -> bool:  # fmt: skip
    return all(
        caps[task] is not None
        and (cells[task][entry] or {}).get("bytes_per_round", 1e18) <= caps[task]
        for task in TASKS
    )


def load(root: Path) -> tuple[dict[str, dict[str, dict[str, Any] | None]], dict[str, int | None]]:
    """Every task's cells (:func:`task_cells`) and bytes cap (:func:`bytes_cap`)."""
    return (
        {task: task_cells(root, task) for task in TASKS},
        {task: bytes_cap(root, task) for task in TASKS},
    )


def finalists(root: Path, loaded: tuple[dict, dict] | None = None) -> list[str]:
    """The defaults and the CHALLENGERS best-scoring other cells within the bytes rule; raises
    SystemExit naming what is missing while the seed-0 grid is incomplete."""
    cells, caps = loaded or load(root)
    missing = [f"{task}/{e}" for task in TASKS for e, c in cells[task].items() if c is None]
    missing += [f"{task}/{BYTES_REFERENCE}" for task, cap in caps.items() if cap is None]
    if missing:
        raise SystemExit(f"defaults_table.py: seed 0 not finished for {', '.join(missing)}")
    score = scores(cells)
    others = sorted(
        (e for e in score if e != DEFAULTS and within_bytes(cells, caps, e)), key=score.get
    )
    return [DEFAULTS, *others[:CHALLENGERS]]


def decide(cells: dict[str, dict[str, dict[str, Any] | None]], chosen: list[str]) -> str:
    """The decision of step 3 in words."""
    winners = []
    for entry in chosen[1:]:
        verdicts = [
            compare_spreads(cells[t][entry]["dev_seeds"], cells[t][DEFAULTS]["dev_seeds"])
            for t in TASKS
        ]
        if any(v["verdict"] is None for v in verdicts):
            return "Not decided yet: a finalist has fewer than 2 dev-slice seeds on a task."
        if all(v["verdict"] == "better" for v in verdicts):
            winners.append(entry)
    if not winners:
        return (
            "The defaults stay: no finalist has a lower 3-seed mean dev loss than theirs on both "
            "tasks outside the tie rule."
        )
    ratio = {
        e: statistics.fmean(
            cells[t][e]["dev_seeds"]["mean"] / cells[t][DEFAULTS]["dev_seeds"]["mean"]
            for t in TASKS
        )
        for e in winners
    }
    best = min(winners, key=ratio.get)
    rates = {t: cells[t][best]["chosen"] for t in TASKS}
    same = len({json.dumps(r, sort_keys=True) for r in rates.values()}) == 1
    return (
        f"{best} replaces the defaults (mean dev loss {ratio[best]:.3f}x theirs)"
        + ("" if same else f"; its rates differ by task ({rates})")
        + "."
    )


def table(root: Path) -> dict[str, Any]:
    cells, caps = load(root)
    try:
        chosen = finalists(root, (cells, caps))
    except SystemExit:
        chosen = []
    return {
        "cells": cells,
        "bytes_cap": caps,
        "scores": scores(cells),
        "finalists": chosen,
        "decision": decide(cells, chosen) if chosen else "Not decided yet: seed 0 is unfinished.",
    }


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _spread(stats: dict[str, Any]) -> str:
    if stats["n"] < 2:
        return "–"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f} (n={stats['n']})"


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# SmartFed's defaults re-decided on the target dev slice",
        "",
        "Made by `benchmarks/target_all.sh defaults finalists` and",
        "`.venv/bin/python benchmarks/defaults_table.py`. Every cell tuned over 3 rates on the",
        "target's dev slice, seed 0; finalists: seeds 1 and 2 at that rate, dev slice again. The",
        "choice reads dev losses only; the test column (seed 0) is shown, not used.",
        f"Score: mean over the tasks of the cell's seed-0 dev loss over the defaults'. Tie rule:"
        f" {TIE_RULE_TABLE}.",
        "",
    ]
    for task in TASKS:
        cap = data["bytes_cap"][task]
        lines += [
            f"## {task}",
            "",
            f"Bytes rule: at most {mib(cap) if cap is not None else '–'} MiB a round "
            f"(FedIT r32's over {BYTES_RULE}).",
            "",
            "| router design | routing | entry | rate | dev loss, seed 0 | dev loss, 3 seeds | "
            "score | MiB a round | test loss, seed 0 (not used) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (design, routing), entry in CELLS.items():
            cell = data["cells"][task].get(entry)
            if cell is None:
                lines.append(f"| {design} | {routing} | {entry} | not finished | | | | | |")
                continue
            rate = ", ".join(f"{k}={v}" for k, v in (cell["chosen"] or {}).items())
            if cell["grid_edge"]:
                rate += f" ({cell['grid_edge']} of its grid)"
            score = data["scores"].get(entry)
            lines.append(
                f"| {design} | {routing} | {entry} | {rate} | {_fmt(cell['dev_loss'])} | "
                f"{_spread(cell['dev_seeds'])} | {'–' if score is None else f'{score:.3f}'} | "
                f"{mib(cell['bytes_per_round'])} | {_fmt(cell['test_loss_seed0'])} |"
            )
        lines.append("")
    lines += [
        f"Finalists: {', '.join(data['finalists']) or '– (seed 0 unfinished)'}.",
        "",
        f"Decision: {data['decision']}",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--finalists", action="store_true",
        help='print one "TASK ENTRY RATE" line per finalist run to make (seeds 1 and 2)',
    )  # fmt: skip
    args = parser.parse_args()
    if args.finalists:
        cells, caps = load(args.results)
        for entry in finalists(args.results, (cells, caps)):
            for task in TASKS:
                (rate,) = cells[task][entry]["chosen"].values()
                print(task, entry, rate)
        return
    data = table(args.results)
    write_text_atomic(args.results / "defaults.md", markdown(data))
    write_text_atomic(args.results / "defaults.json", json.dumps(data, indent=1) + "\n")
    print(markdown(data))


if __name__ == "__main__":
    main()
