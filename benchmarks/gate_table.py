"""The gate's table (``benchmarks/gate.sh``): seed 0 of each entry on both tasks' target sets.

    .venv/bin/python benchmarks/gate_table.py    # benchmarks/results/target/gate.md, gate.json

One row per finished entry folder ``benchmarks/results/target/TASK/ENTRY/`` (a ``smartfed bench
--sweep learning_rate=... --seeds 0`` chosen on the target's dev slice): the final target test
loss (the headline), the in-distribution test loss, the chosen rate, and the bytes of one
steady-state round (the last round's up + down: Fed-SB's one-off init broadcast is in its
total, not in this figure). An entry whose seed-0 run has not finished is listed as pending.
Below each task's table, the ablation: every other SmartFed entry against the defaults, with the
settings it changed (read from the two runs' config.json) and the change in target test loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from smartfed.bench.layout import final_loss, finished_runs, read_run, run_curve
from smartfed.bench.question import DEFAULTS, equal_bytes_rivals
from smartfed.bench.stats import REFERENCE
from smartfed.bench.tables import (
    ACCURACY_FILES,
    GAIN_TARGET_TEXT,
    GAIN_TARGETS,
    accuracy_text,
    first_reach,
    gain_targets,
    grid_edge,
    mib,
    pooled_accuracy,
    read_json,
)
from smartfed.utils.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "target"
TASKS = ("cn_math", "math_code")
# What may differ between an ablation run and the defaults' run without being the ablation.
NOT_THE_ABLATION = {"learning_rate", "output_dir", "seed"}


def entry_row(bench_dir: Path) -> dict[str, Any] | None:
    """The seed-0 numbers of one entry folder, or None while it has not finished."""
    bench = read_json(bench_dir / "bench.json")
    label = bench["entries"][0]["label"]
    runs = finished_runs(bench_dir, label, [0])
    if not runs:
        return None
    run = read_run(runs[0])
    summary, rows = run["summary"], run["rows"]
    results = (
        read_json(bench_dir / "results.json") if (bench_dir / "results.json").is_file() else {}
    )
    method = (results.get("methods") or {}).get(label) or {}
    chosen = method.get("chosen")
    last = rows[-1] if rows else {"bytes_up": 0, "bytes_down": 0}
    return {
        "entry": bench_dir.name,
        "method": summary["method"],
        "chosen": chosen,
        "grid_edge": grid_edge(method.get("grid") or [], chosen),
        "target_test_loss": final_loss(summary, initial_if_untrained=True, metric="target_loss"),
        "initial_target_loss": (summary.get("initial_eval") or {}).get("target_loss"),
        "test_loss": final_loss(summary, initial_if_untrained=True),
        "bytes_per_round": last["bytes_up"] + last["bytes_down"],
        "bytes_total": summary["bytes_up"] + summary["bytes_down"],
        "target": summary.get("target"),
        "curve": run_curve(runs[0], "target_loss"),
        "accuracy": {  # benchmarks/final_evals.sh, where it has scored the run
            which: pooled_accuracy([read_json(p)] if (p := runs[0] / name).is_file() else [])
            for which, name in ACCURACY_FILES.items()
        },
        "settings": run_settings(runs[0]),
    }


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config, its method's settings flattened in beside the rest."""
    config = read_json(run_dir / "config.json")
    return {**{k: v for k, v in config.items() if k != "method_settings"},
            **(config.get("method_settings") or {})}  # fmt: skip


def changed_settings(run: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings of an ablation run that differ from the defaults' run (rate and seed aside)."""
    keys = sorted((run.keys() | defaults.keys()) - NOT_THE_ABLATION)
    return {k: run.get(k) for k in keys if run.get(k) != defaults.get(k)}


def task_table(task: str, root: Path) -> dict[str, Any]:
    rows, pending = [], []
    for bench_dir in sorted(p for p in (root / task).glob("*") if (p / "bench.json").is_file()):
        row = entry_row(bench_dir)
        (rows.append(row) if row else pending.append(bench_dir.name))
    rows.sort(key=lambda r: r["target_test_loss"] if r["target_test_loss"] is not None else 1e9)
    reference = next((r for r in rows if r["entry"] == REFERENCE), None)
    targets = gain_targets(reference["curve"]) if reference else None
    for row in rows:
        curve = row.pop("curve")
        row["to_target"] = {
            name: first_reach(curve, value) for name, value in (targets or {}).items()
        }
    ablation = ablation_rows(rows)
    for row in rows:
        del row["settings"]  # the ablation's diff keeps what matters of them
    return {"task": task, "rows": rows, "pending": pending, "targets": targets,
            "gate": gate_answer(rows), "ablation": ablation}  # fmt: skip


def ablation_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other SmartFed run against the defaults': what it changed and the target loss it
    gained (negative) or lost, at round 0 and at the end."""
    defaults = next((r for r in rows if r["entry"] == DEFAULTS), None)
    if defaults is None:
        return []
    out = []
    for row in rows:
        if row["method"] != defaults["method"] or row["entry"] == DEFAULTS:
            continue
        out.append({
            "entry": row["entry"],
            "changed": changed_settings(row["settings"], defaults["settings"]),
            "delta": _delta(row["target_test_loss"], defaults["target_test_loss"]),
            "initial_delta": _delta(row["initial_target_loss"], defaults["initial_target_loss"]),
        })  # fmt: skip
    return sorted(out, key=lambda r: r["delta"] if r["delta"] is not None else 1e9)


def _delta(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def gate_answer(rows: list[dict[str, Any]]) -> str:
    """Whether SmartFed's defaults end below every knowledge-free entry that sends at least as
    many bytes a round (seed 0 only: a direction, not a verdict)."""
    by_entry = {r["entry"]: r for r in rows}
    ours = by_entry.get(DEFAULTS)
    if ours is None:
        return "SmartFed's defaults have not finished yet."
    sent = {e: r["bytes_per_round"] for e, r in by_entry.items()}
    rivals = [by_entry[e] for e in equal_bytes_rivals(sent)]
    if not rivals:
        return "No finished knowledge-free entry sends at least SmartFed's bytes a round yet."
    beaten = [r["entry"] for r in rivals if ours["target_test_loss"] < r["target_test_loss"]]
    lost = [r["entry"] for r in rivals if r["entry"] not in beaten]
    if not lost:
        return f"SmartFed's defaults are lower than every one of them ({', '.join(beaten)})."
    best = min((r for r in rivals), key=lambda r: r["target_test_loss"])
    return (
        f"SmartFed's defaults are not lower than {', '.join(lost)}; the best is {best['entry']} "
        f"({best['target_test_loss']:.4f} vs SmartFed's {ours['target_test_loss']:.4f})."
    )


ACCURACY_HEADER = {"target": "target accuracy (greedy)", "test": "in-distribution accuracy"}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown(tables: list[dict[str, Any]]) -> str:
    lines = [
        "# Gate: seed 0 on the target sets",
        "",
        "Made by `benchmarks/gate.sh` (each entry tuned over 3 learning rates on the target's dev",
        "slice, then one run, seed 0, on the target's test slice) and",
        "`.venv/bin/python benchmarks/gate_table.py`. One seed: a direction, not a verdict.",
        "Target sets: cn_math -> MGSM-zh in Math23K's format, math_code -> GSM-Hard in",
        "gsm8k_pal's format (`smartfed.data.targets`). Bytes a round: the last round's up + down.",
        "Accuracy, where `benchmarks/final_evals.sh` scored seed 0: k/n greedy, its 95 % Wilson",
        "interval and how many answers gave a number at all (numeric: right or wrong).",
        "",
    ]
    for table in tables:
        scored = [w for w in ACCURACY_FILES if any(r["accuracy"][w] for r in table["rows"])]
        header = ["entry", "chosen", "target test loss (round 0)", "in-distribution test loss",
                  "MiB a round", "MiB total", *(f"round, MiB to {t}" for t in GAIN_TARGETS),
                  *(ACCURACY_HEADER[w] for w in scored)]  # fmt: skip
        lines += [
            f"## {table['task']}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in table["rows"]:
            chosen = ", ".join(f"{k}={v}" for k, v in (r["chosen"] or {}).items()) or "–"
            if r["grid_edge"]:
                chosen += f" ({r['grid_edge']} of its grid)"
            reached = [
                "–" if r["to_target"].get(t) is None
                else f"{r['to_target'][t][0]}, {mib(r['to_target'][t][1])}"
                for t in GAIN_TARGETS
            ]  # fmt: skip
            lines.append(
                f"| {r['entry']} | {chosen} | {_fmt(r['target_test_loss'])} "
                f"({_fmt(r['initial_target_loss'])}) | {_fmt(r['test_loss'])} | "
                f"{mib(r['bytes_per_round'])} | {mib(r['bytes_total'])} | "
                + " | ".join([*reached, *(accuracy_text(r["accuracy"][w]) for w in scored)])
                + " |"
            )
        if table["pending"]:
            lines.append(f"\nNot finished yet: {', '.join(table['pending'])}.")
        targets = table.get("targets")
        if targets:
            lines.append(
                "\nTargets (FedIT's curve): "
                + "; ".join(f"{t} = {v:.4f} ({GAIN_TARGET_TEXT[t]})" for t, v in targets.items())
                + '. "–": not reached.'
            )
        lines += ["", f"Gate: {table['gate']}", ""]
        lines += ablation_markdown(table)
    return "\n".join(lines)


def ablation_markdown(table: dict[str, Any]) -> list[str]:
    if not table["ablation"]:
        return []
    lines = [
        f"### {table['task']}: SmartFed with one thing changed",
        "",
        "Each row against SmartFed's defaults (both tuned on the dev slice, seed 0); a negative",
        "change is a lower (better) target test loss.",
        "",
        "| entry | changed | target test loss change | at round 0 |",
        "|---|---|---|---|",
    ]
    for r in table["ablation"]:
        changed = ", ".join(f"{k}={v}" for k, v in r["changed"].items()) or "nothing"
        lines.append(
            f"| {r['entry']} | {changed} | {_signed(r['delta'])} | {_signed(r['initial_delta'])} |"
        )
    return [*lines, ""]


def _signed(value: float | None) -> str:
    """A change with its sign; one that rounds to zero reads +0.0000, whichever side it is on."""
    if value is None:
        return "–"
    return f"{round(value, 4) + 0.0:+.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    tables = [task_table(task, args.results) for task in TASKS]
    write_text_atomic(args.results / "gate.md", markdown(tables))
    write_text_atomic(args.results / "gate.json", json.dumps(tables, indent=1) + "\n")
    print(markdown(tables))


if __name__ == "__main__":
    main()
