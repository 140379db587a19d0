"""Tables and plot of the reference results (``benchmarks/reference.sh TASK``): one row per bench
folder of ``benchmarks/results/reference/TASK/``, final test eval loss over seeds, and rounds and
bytes to the loss targets the paper's claims are stated against.

    .venv/bin/python benchmarks/reference_table.py cn_math  # README.md, reference.png, summary.json
    .venv/bin/python benchmarks/reference_table.py cn_math --results /other/results/dir

Each folder is one ``smartfed bench --sweep learning_rate=... --seeds 0,1,2`` (merge: no sweep).
Runs still in progress (no summary.json) are skipped: an entry shows how many seeds finished.
Targets (FedIT = the ``fedit`` folder, merge = the ``merge`` folder, both mean final losses):
T_merge = merge; T_half = merge + (FedIT - merge) / 2; T_fedit = 1.1 x FedIT.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from smartfed.bench.layout import (
    TUNE_DIR,
    final_loss,
    finished_runs,
    run_curve,
    run_dir,
    seed_of,
    tune_run_dir,
)
from smartfed.bench.stats import REFERENCE, TARGET_FACTOR, TIE_RULE_TABLE, mean_std, verdict
from smartfed.bench.tables import MERGE, TARGET_NEEDS, TARGET_TEXT, mib, read_json

RESULTS = Path(__file__).resolve().parent / "results" / "reference"
TRANSFER_FILE = "transfer_loss.json"  # `smartfed eval --benchmark loss` output, per seed run
INF = "inf"  # a ratio whose entry reached the target at round 0 (0 rounds, 0 bytes)


def _point_text(point: dict[str, Any] | None) -> str:
    """A grid point compactly: ``5e-4`` for one swept setting, ``a=1,b=2e-3`` for several."""

    def short(value: Any) -> str:
        if isinstance(value, float):
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return str(value)

    if not point:
        return "–"
    if len(point) == 1:
        return short(next(iter(point.values())))
    return ",".join(f"{name}={short(value)}" for name, value in point.items())


def _final_loss(run: Path) -> float | None:
    return final_loss(read_json(run / "summary.json"), initial_if_untrained=True)


def _grid_from_folders(bench_dir: Path, label: str, sweep: list[dict] | None) -> list[dict]:
    """The tuning grid of a bench whose results.json is not written yet (still running): the
    points of bench.json's sweep, each with its final validation loss once its run finished."""
    if not sweep or not (bench_dir / TUNE_DIR / label).is_dir():
        return []
    names = [axis["setting"] for axis in sweep]
    grid = []
    for values in itertools.product(*(axis["values"] for axis in sweep)):
        point = dict(zip(names, values, strict=True))
        run = tune_run_dir(bench_dir, label, point)
        loss = _final_loss(run) if (run / "summary.json").is_file() else None
        grid.append({"point": point, "validation_loss": loss})
    return grid


def _chosen_from_config(run: Path, grid: list[dict]) -> dict[str, Any] | None:
    """The grid point a seed run uses, read from its config.json (results.json not written)."""
    if not grid or not (run / "config.json").is_file():
        return None
    config = read_json(run / "config.json")
    settings = {**config, **(config.get("method_settings") or {})}
    return {name: settings.get(name) for name in grid[0]["point"]}


def _mean_curve(curves: list[list[tuple[int, float, int]]]) -> list[dict[str, Any]]:
    """Per evaluated round that every seed has: mean and sample std of the loss over seeds, and
    the mean cumulative bytes up + down after that round."""
    rounds = sorted(set.intersection(*(set(r for r, _, _ in curve) for curve in curves)))
    by_round = [{r: (loss, total) for r, loss, total in curve} for curve in curves]
    points = []
    for rnd in rounds:
        stats = mean_std([seed[rnd][0] for seed in by_round])
        points.append(
            {
                "round": rnd,
                "mean": stats["mean"],
                "std": stats["std"],
                "bytes": statistics.mean(seed[rnd][1] for seed in by_round),
            }
        )
    return points


def _entry(bench_dir: Path, label: str, method: str, seeds: list[int], tuning: dict) -> dict:
    """One row: what tuning chose and the finished seed runs of one bench entry."""
    name = bench_dir.name if tuning["single"] else f"{bench_dir.name}/{label}"
    runs = finished_runs(bench_dir, label, seeds)
    started = [run_dir(bench_dir, label, seed) for seed in seeds]
    chosen = tuning["chosen"]
    if chosen is None and tuning["grid"]:  # results.json not written yet: ask the seed runs
        found = (_chosen_from_config(run, tuning["grid"]) for run in started)
        chosen = next((point for point in found if point), None)
    row: dict[str, Any] = {
        "name": name,
        "folder": bench_dir.name,
        "label": label,
        "method": method,
        "tuned": bool(tuning["grid"]),
        "grid": tuning["grid"],
        "chosen": chosen,
        "seeds_planned": len(seeds),
        # A bench without --seeds ran once, in the entry's own folder: call that seed 0.
        "seeds": [seed_of(run) for run in runs] if seeds else [0] * len(runs),
    }
    if not runs:
        return row
    summaries = [read_json(run / "summary.json") for run in runs]
    finals = [_final_loss(run) for run in runs]
    totals = [s.get("bytes_up", 0) + s.get("bytes_down", 0) for s in summaries]
    transfer = [run / TRANSFER_FILE for run in runs if (run / TRANSFER_FILE).is_file()]
    transfer_results = [read_json(path) for path in transfer]
    row.update(
        {
            "per_seed": dict(zip(row["seeds"], finals, strict=True)),
            "final_loss": mean_std(finals),
            "bytes_per_round": statistics.mean(
                total / s["rounds"] if s.get("rounds") else 0
                for total, s in zip(totals, summaries, strict=True)
            ),
            "total_bytes": statistics.mean(totals),
            "wall_s": statistics.mean(s.get("wall_s") or 0.0 for s in summaries),
            "curve": _mean_curve([run_curve(run) for run in runs]),
            "transfer_loss": mean_std([r["value"] for r in transfer_results]) if transfer else None,
            "transfer_data": sorted(
                {f"{r.get('dataset')}/{r.get('split')}" for r in transfer_results}
            ),
        }
    )
    return row


def load_entries(task_dir: Path) -> list[dict]:
    """Every entry of every bench folder under task_dir, finished seeds or not."""
    entries = []
    for bench_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
        results_path, bench_path = bench_dir / "results.json", bench_dir / "bench.json"
        if results_path.is_file():  # the bench finished: its own record of tuning
            results = read_json(results_path)
            methods = results.get("methods") or {}
            seeds = results.get("seeds") or []
            labels = {label: m.get("method", label) for label, m in methods.items()}
            tunings = {
                label: {"grid": m.get("grid") or [] if m.get("tuned") else [],
                        "chosen": m.get("chosen") if m.get("tuned") else None}
                for label, m in methods.items()
            }  # fmt: skip
        elif bench_path.is_file():  # still running: bench.json and the finished tuning runs
            bench = read_json(bench_path)
            seeds = bench.get("seeds") or []
            labels = {e["label"]: e.get("method", e["label"]) for e in bench.get("entries", [])}
            sweep = bench.get("sweep")
            tunings = {
                label: {"grid": _grid_from_folders(bench_dir, label, sweep), "chosen": None}
                for label in labels
            }
        else:
            continue
        for label, method in labels.items():
            tuning = {**tunings[label], "single": len(labels) == 1}
            entries.append(_entry(bench_dir, label, method, seeds, tuning))
    return entries


def reach(curve: list[dict], target: float) -> dict[str, Any] | None:
    """Round and cumulative bytes of the first evaluated round whose seed-mean loss is at or
    below target (round 0: the initial evaluation, 0 bytes); None if never."""
    for point in curve:
        # A hair of tolerance: merge reaches T_merge, its own mean, through other float sums.
        if point["mean"] <= target + 1e-12 * abs(target):
            return {"round": point["round"], "bytes": point["bytes"]}
    return None


def _ratio(reference: float | None, value: float | None) -> float | str | None:
    """FedIT's figure over the entry's: None when either did not reach the target (or both at
    round 0), INF when only the entry needed nothing."""
    if reference is None or value is None:
        return None
    if value == 0:
        return INF if reference > 0 else None
    return reference / value


def targets(entries: list[dict]) -> tuple[dict[str, float | None], list[str]]:
    """The three targets (None where merge or FedIT has no finished seed) and why any is None."""
    means = {e["name"]: e["final_loss"]["mean"] for e in entries if "final_loss" in e}
    merge, fedit = means.get(MERGE), means.get(REFERENCE)
    values = {
        "T_merge": merge,
        "T_half": merge + (fedit - merge) / 2 if merge is not None and fedit is not None else None,
        "T_fedit": TARGET_FACTOR * fedit if fedit is not None else None,
    }
    missing = [
        f"{name} needs the {' and '.join(f'`{n}`' for n in TARGET_NEEDS[name] if n not in means)} "
        "folder (no finished seed run there): not computed"
        for name, value in values.items()
        if value is None
    ]
    return values, missing


def summarise(entries: list[dict]) -> dict[str, Any]:
    """Verdicts, rounds and bytes to each target and the ratios against FedIT, per entry."""
    finished = [e for e in entries if "final_loss" in e]
    target_values, missing = targets(finished)
    reference = next((e for e in finished if e["name"] == REFERENCE), None)
    for entry in finished:
        if entry is reference:
            entry["vs_fedit"] = "reference"
        else:
            ref_loss = reference["final_loss"] if reference else None
            entry["vs_fedit"] = verdict(entry["final_loss"], ref_loss) if ref_loss else None
        entry["to_target"] = {}
        for name, value in target_values.items():
            if value is None:
                continue
            mine = reach(entry["curve"], value)
            ref = reach(reference["curve"], value) if reference else None
            entry["to_target"][name] = {
                "round": mine and mine["round"],
                "bytes": mine and mine["bytes"],
                "bytes_ratio_vs_fedit": _ratio(ref and ref["bytes"], mine and mine["bytes"]),
                "rounds_ratio_vs_fedit": _ratio(ref and ref["round"], mine and mine["round"]),
            }
    return {"targets": target_values, "missing_targets": missing}


def _pm(stats: dict[str, Any] | None, spec: str = ".4f") -> str:
    if not stats or stats["mean"] is None:
        return "–"
    std = f" ± {stats['std']:{spec}}" if stats["std"] is not None else ""
    return f"{stats['mean']:{spec}}{std}"


def _ratio_text(value: float | str | None) -> str:
    if value is None:
        return "–"
    return "∞" if value == INF else f"{value:.2f}"


def _grid_text(entry: dict) -> str:
    if not entry["grid"]:
        return "untuned"
    cells = []
    for row in entry["grid"]:
        loss = row["validation_loss"]
        cell = f"{_point_text(row['point'])}: {'…' if loss is None else f'{loss:.3f}'}"
        cells.append(f"**{cell}**" if row["point"] == entry["chosen"] else cell)
    return ", ".join(cells)


def markdown(task: str, command: str, entries: list[dict], summary: dict[str, Any]) -> str:
    finished = [e for e in entries if "final_loss" in e]
    finished.sort(key=lambda e: e["final_loss"]["mean"])
    waiting = [e for e in entries if "final_loss" not in e]
    transfer = any(e.get("transfer_loss") for e in finished)
    lines = [
        f"# Reference results: {task}",
        "",
        f"Generated by `{command}` from the bench folders beside this file (do not edit; rerun "
        "it to refresh). Each folder is one `smartfed bench` (its command line heads the "
        "folder's `results.md`): the learning rate tuned on a validation slice of the training "
        "data (grid below, chosen point in bold), then the chosen rate run on the test split "
        "once per seed.",
        "",
        "## Final test eval loss",
        "",
        "Mean ± sample standard deviation over the finished seeds (n = finished / planned). "
        f"Verdict against FedIT: {TIE_RULE_TABLE}. Bytes are up + down, mean over seeds; wall "
        "time is the mean per test run.",
        "",
    ]
    header = ["entry", "method", "chosen lr", "grid (validation loss)", "seeds n",
              "final test eval loss", "vs fedit", "MiB / round", "MiB total",
              "wall s / run"]  # fmt: skip
    if transfer:
        data = sorted({d for e in finished for d in e.get("transfer_data", [])})
        header.append(f"transfer loss ({', '.join(data)})")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in finished:
        cells = [
            e["name"], e["method"], _point_text(e["chosen"]), _grid_text(e),
            f"{e['final_loss']['n']}/{e['seeds_planned'] or 1}", _pm(e["final_loss"]),
            e["vs_fedit"] or "–", mib(e["bytes_per_round"]), mib(e["total_bytes"]),
            f"{e['wall_s']:.0f}",
        ]  # fmt: skip
        if transfer:
            cells.append(_pm(e.get("transfer_loss")))
        lines.append("| " + " | ".join(cells) + " |")
    if transfer:
        lines += [
            "",
            "Transfer loss: `benchmarks/reference_transfer.sh` evaluates each seed run's final "
            "weights; – where a run has no `transfer_loss.json` (weights are not committed, so a "
            "run whose weights are gone must be rerun to get one).",
        ]
    if waiting:
        lines += ["", "No finished test run yet (tuning or the first seed still running):"]
        lines += [f"- {e['name']} ({e['method']}): grid {_grid_text(e)}" for e in waiting]
    lines += [
        "",
        "## Rounds and bytes to target",
        "",
        "The paper states its claims as figures to reach a target loss. Targets, from the mean "
        "final test eval losses above:",
        "",
    ]
    for name, value in summary["targets"].items():
        shown = f"{value:.4f}" if value is not None else "not computed"
        lines.append(f"- **{name}** = {shown}: {TARGET_TEXT[name]}.")
    lines += [f"- {text}." for text in summary["missing_targets"]]
    lines += [
        "",
        "Rounds to target: the first evaluated round whose loss, averaged over the seeds, is at "
        "or below the target; round 0 is the evaluation before any training (0 bytes). Bytes "
        "to target: the cumulative traffic up + down after that round. An entry that never gets "
        'there within its rounds has "not reached". The ratios are FedIT\'s figure over the '
        "entry's (bytes: FedIT's bytes to target / the entry's; rounds likewise), so above 1 "
        "means the entry needs less; – when either did not reach the target, ∞ when the entry "
        "was already there at round 0 and FedIT was not.",
        "",
    ]
    for name, value in summary["targets"].items():
        if value is None:
            continue
        lines += [
            f"### {name} = {value:.4f}",
            "",
            "| entry | rounds to target | MiB to target | FedIT bytes / entry bytes | "
            "FedIT rounds / entry rounds |",
            "|---|---|---|---|---|",
        ]
        for e in finished:
            t = e["to_target"][name]
            reached = t["round"] is not None
            lines.append(
                f"| {e['name']} | {t['round'] if reached else 'not reached'} | "
                f"{mib(t['bytes']) if reached else 'not reached'} | "
                f"{_ratio_text(t['bytes_ratio_vs_fedit'])} | "
                f"{_ratio_text(t['rounds_ratio_vs_fedit'])} |"
            )
        lines.append("")
    seeds = sorted({s for e in finished for s in e["per_seed"]})
    lines += [
        "## Final test eval loss per seed",
        "",
        "| entry | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for e in finished:
        cells = [f"{e['per_seed'][s]:.4f}" if s in e["per_seed"] else "–" for s in seeds]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![eval loss per round and per MiB](reference.png)",
        "",
        "Plot: test eval loss, mean over seeds with the sample standard deviation as error bars, "
        "per round and per cumulative MiB (log scale: round 0, 0 bytes, is left out there); "
        "dashed lines are the targets; entries that train nothing (merge) are solid "
        "horizontal lines. Eval loss: mean answer-token loss on the task's held-out test split.",
        "",
    ]
    return "\n".join(lines)


def plot(task: str, entries: list[dict], summary: dict[str, Any], path: Path) -> None:
    figure, (per_round, per_mib) = plt.subplots(1, 2, figsize=(13, 5))
    finished = sorted(
        (e for e in entries if "final_loss" in e), key=lambda e: e["final_loss"]["mean"]
    )
    for e in finished:  # legend in the table's order
        curve = e["curve"]
        if not any(p["round"] > 0 for p in curve):  # sends nothing: one level, no x extent
            for axis in (per_round, per_mib):
                axis.axhline(e["final_loss"]["mean"], color="black", linewidth=1.2,
                             label=f"{e['name']} (sends nothing)")  # fmt: skip
            continue
        errors = [p["std"] or 0 for p in curve]
        line = per_round.errorbar(
            [p["round"] for p in curve], [p["mean"] for p in curve], yerr=errors,
            marker="o", markersize=3, capsize=3, label=f"{e['name']} (n={e['final_loss']['n']})",
        )  # fmt: skip
        sent = [(p, err) for p, err in zip(curve, errors, strict=True) if p["bytes"] > 0]
        per_mib.errorbar(
            [p["bytes"] / 2**20 for p, _ in sent], [p["mean"] for p, _ in sent],
            yerr=[err for _, err in sent], marker="o", markersize=3, capsize=3,
            color=line[0].get_color(),
        )  # fmt: skip
    styles = {"T_merge": "gray", "T_half": "tab:gray", "T_fedit": "dimgray"}
    dashes = {"T_merge": (0, (5, 3)), "T_half": (0, (2, 2)), "T_fedit": (0, (8, 2, 2, 2))}
    for name, value in summary["targets"].items():
        if value is None:
            continue
        for axis in (per_round, per_mib):
            axis.axhline(value, color=styles[name], linestyle=dashes[name], linewidth=1,
                         label=f"{name} = {value:.3f}" if axis is per_round else None)  # fmt: skip
    per_mib.set_xscale("log")
    per_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    per_round.set_xlabel("round")
    per_mib.set_xlabel("cumulative MiB (up + down)")
    for axis in (per_round, per_mib):
        axis.set_ylabel("test eval loss (mean ± std over seeds)")
        axis.grid(alpha=0.3)
    per_round.set_title(f"{task}: eval loss per round")
    per_mib.set_title(f"{task}: eval loss per traffic")
    per_round.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _json_ready(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "transfer_data"}


def write_outputs(
    task: str, task_dir: Path, command: str, out_dir: Path | None = None, *, with_plot: bool = True
) -> str:
    """README.md, reference.png (unless ``with_plot`` is off) and summary.json in ``out_dir``
    (default task_dir); returns the markdown."""
    if not task_dir.is_dir():
        raise SystemExit(f"{task_dir}: no such folder (benchmarks/reference.sh {task} fills it)")
    out_dir = task_dir if out_dir is None else out_dir
    entries = load_entries(task_dir)
    if not any("final_loss" in e for e in entries):
        raise SystemExit(f"{task_dir}: no finished seed run in any bench folder yet")
    summary = summarise(entries)
    text = markdown(task, command, entries, summary)
    (out_dir / "README.md").write_text(text, encoding="utf-8")
    if with_plot:
        plot(task, entries, summary, out_dir / "reference.png")
    record = {
        "task": task,
        "generated_by": command,
        "tie_rule": TIE_RULE_TABLE,
        "targets": summary["targets"],
        "target_definitions": TARGET_TEXT,
        "missing_targets": summary["missing_targets"],
        "ratios": "FedIT's figure / the entry's; null: either did not reach the target; "
        f'"{INF}": the entry reached it at round 0 and FedIT did not',
        "entries": {e["name"]: _json_ready(e) for e in entries},
    }
    (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return text


def command_line(task: str, results: Path) -> str:
    """How the page names the command that generated it (a relative --results as given)."""
    command = f".venv/bin/python benchmarks/reference_table.py {task}"
    if results.resolve() != RESULTS:
        command += f" --results {results}"
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task folder under the results folder, e.g. cn_math")
    parser.add_argument(
        "--results", type=Path, default=RESULTS, metavar="DIR",
        help="folder holding TASK/ (default benchmarks/results/reference)",
    )  # fmt: skip
    args = parser.parse_args()
    print(write_outputs(args.task, args.results / args.task, command_line(args.task, args.results)))


if __name__ == "__main__":
    main()
