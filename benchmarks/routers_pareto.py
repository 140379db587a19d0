"""Pareto table and plot of the router benchmark: final eval loss vs bytes per round and vs
total bytes, one point per method folder of ``benchmarks/results/routers/TASK/``.

    .venv/bin/python benchmarks/routers_pareto.py cn_math      # writes pareto.md and pareto.png
    .venv/bin/python benchmarks/routers_pareto.py cn_math --include cn_math_rounds12

``--include DIR`` adds the bench folders of ``benchmarks/results/routers/DIR/`` (named
``DIR/folder``), e.g. longer runs or the EEQA on/off runs, against the same FedIT target.
Methods that train nothing (merge) send no bytes: they are in the table, not on the log-scale plot.

Each folder is one ``smartfed bench --sweep ... --seeds ...`` (see benchmarks/routers.sh): the
chosen learning rate's test-split runs, one per seed. Losses are the mean over seeds (± the
sample standard deviation when there are several); curves are the per-round mean over seeds.
"Bytes to target" is the cumulative traffic (up + down) after the first round at which the
mean curve reaches ``TARGET_FACTOR`` x FedIT's final mean loss (FedIT = the ``fedit`` folder),
or "not reached" within the run's rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results" / "routers"
REFERENCE = "fedit"
TARGET_FACTOR = 1.1


def run_curve(run_dir: Path) -> list[tuple[int, float, int]]:
    """(round, eval loss, cumulative bytes up + down after that round) of one run, starting with
    round 0 (the initial evaluation, nothing sent yet) when summary.json records it. Bytes count
    every round, evaluated or not: a round without an evaluation still sent its traffic."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    initial = (summary.get("initial_eval") or {}).get("eval_loss")
    curve = [] if initial is None else [(0, initial, 0)]
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    total = 0
    for line in filter(None, lines):
        row = json.loads(line)
        total += row.get("bytes_up", 0) + row.get("bytes_down", 0)
        if "eval_loss" in row:
            curve.append((row["round"], row["eval_loss"], total))
    return curve


def _curves(run_dir: Path) -> tuple[list[float], list[float]]:
    """(eval loss per round, cumulative bytes up + down per round) of one run, from round 1; a
    run that trained nothing (merge) keeps its one evaluation, before any round."""
    curve = run_curve(run_dir)
    trained = [point for point in curve if point[0] > 0] or curve[:1]
    return [loss for _, loss, _ in trained], [total for _, _, total in trained]


def finished_runs(bench_dir: Path, label: str, seeds: list[int] | None) -> list[Path]:
    """The run folders of one bench entry that finished (have summary.json): one per seed, or
    the entry's own folder in a bench without seeds."""
    runs = [bench_dir / label / f"seed{seed}" for seed in seeds or []]
    runs = runs or [bench_dir / label]
    return [run for run in runs if (run / "summary.json").is_file()]


def _learning_rate(run_dir: Path) -> float | str:
    """The rate a run used when no sweep chose it ("-" for methods that train nothing)."""
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    return (config.get("method_settings") or {}).get("learning_rate", "-")


def load_points(task_dir: Path, prefix: str = "") -> list[dict]:
    points = []
    for results_path in sorted(task_dir.glob("*/results.json")):
        results = json.loads(results_path.read_text(encoding="utf-8"))
        for label, entry in results["methods"].items():
            # seeds absent: one seed, run in the entry's own folder
            runs = finished_runs(results_path.parent, label, results.get("seeds"))
            if not runs:
                continue
            curves = [_curves(run) for run in runs]
            rounds = min(len(losses) for losses, _ in curves)
            mean_curve = [statistics.mean(c[0][r] for c in curves) for r in range(rounds)]
            finals = [c[0][rounds - 1] for c in curves]
            points.append(
                {
                    "name": prefix + results_path.parent.name,
                    "method": label,
                    "learning_rate": (entry.get("chosen") or {}).get("learning_rate")
                    or _learning_rate(runs[0]),
                    "seeds": len(runs),
                    "final_loss": statistics.mean(finals),
                    "final_std": statistics.stdev(finals) if len(finals) > 1 else None,
                    "bytes_per_round": curves[0][1][0],
                    "curve": mean_curve,
                    "cumulative_bytes": curves[0][1][:rounds],
                }
            )
    return points


def bytes_to_target(point: dict, target: float) -> int | None:
    for loss, total in zip(point["curve"], point["cumulative_bytes"], strict=True):
        if loss <= target:
            return total
    return None


def _mib(value: float) -> str:
    return f"{value / 2**20:,.2f}"


def write_outputs(task: str, points: list[dict], out_dir: Path) -> str:
    reference = next((p for p in points if p["name"] == REFERENCE), None)
    target = TARGET_FACTOR * reference["final_loss"] if reference else None
    ref_bytes = bytes_to_target(reference, target) if reference else None
    lines = [
        f"# Router Pareto table: {task}",
        "",
        "Generated by `.venv/bin/python benchmarks/routers_pareto.py "
        f"{task}` from the bench folders beside this file.",
        "",
        f"Target: {TARGET_FACTOR} x FedIT's final mean eval loss"
        + (f" = {target:.3f}" if target else " (no fedit folder yet)")
        + ". Bytes are up + down.",
        "",
        "| folder | lr | seeds | final eval loss | MiB per round | MiB total | "
        "MiB to target | x fewer bytes than FedIT to target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for point in sorted(points, key=lambda p: p["bytes_per_round"]):
        spread = f" ± {point['final_std']:.3f}" if point["final_std"] is not None else ""
        reached = bytes_to_target(point, target) if target else None
        ratio = f"{ref_bytes / reached:.1f}" if reached and ref_bytes else "-"
        lines.append(
            f"| {point['name']} | {point['learning_rate']} | {point['seeds']} | "
            f"{point['final_loss']:.3f}{spread} | {_mib(point['bytes_per_round'])} | "
            f"{_mib(point['cumulative_bytes'][-1])} | "
            f"{_mib(reached) if reached else 'not reached'} | {ratio} |"
        )
    table = "\n".join(lines) + "\n"
    (out_dir / "pareto.md").write_text(table, encoding="utf-8")

    figure, (per_round, total) = plt.subplots(1, 2, figsize=(12, 4.5))
    for point in points:
        if not point["bytes_per_round"]:
            continue  # nothing trained, nothing sent: no place on a log scale
        per_round.errorbar(
            point["bytes_per_round"], point["final_loss"], yerr=point["final_std"] or 0,
            fmt="o", capsize=3, label=point["name"],
        )  # fmt: skip
        total.plot(point["cumulative_bytes"], point["curve"], marker="o", label=point["name"])
    for axis, title in ((per_round, "bytes per round"), (total, "cumulative bytes")):
        axis.set_xscale("log")
        axis.set_xlabel(f"{title} (up + down)")
        axis.set_ylabel("test eval loss (mean over seeds)")
        if target:
            axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    per_round.set_title(f"{task}: final loss vs bytes per round")
    total.set_title(f"{task}: loss per round vs bytes so far")
    total.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_dir / "pareto.png", dpi=120)
    plt.close(figure)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task folder under benchmarks/results/routers/")
    parser.add_argument(
        "--include", action="append", default=[], metavar="DIR",
        help="also the bench folders of benchmarks/results/routers/DIR (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    task_dir = RESULTS / args.task
    points = load_points(task_dir)
    for extra in args.include:
        if not (RESULTS / extra).is_dir():
            raise SystemExit(f"--include {extra}: no folder {RESULTS / extra}")
        points += load_points(RESULTS / extra, prefix=f"{extra}/")
    if not points:
        raise SystemExit(f"no finished bench folders under {task_dir}")
    print(write_outputs(args.task, points, task_dir))


if __name__ == "__main__":
    main()
