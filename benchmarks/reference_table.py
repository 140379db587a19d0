"""Tables and plot of the reference results (``benchmarks/reference.sh TASK``): one row per bench
folder of ``benchmarks/results/reference/TASK/``, final test eval loss over seeds, and rounds and
bytes to the loss targets the paper's claims are stated against.

    .venv/bin/python benchmarks/reference_table.py cn_math  # README.md, reference.png, summary.json
    .venv/bin/python benchmarks/reference_table.py cn_math --results /other/results/dir
    .venv/bin/python benchmarks/reference_table.py cn_math --metric target_loss  # results/target

Each folder is one ``smartfed bench --sweep learning_rate=... --seeds 0,1,2`` (merge: no sweep).
Runs still in progress (no summary.json) are skipped: an entry shows how many seeds finished.
Targets (FedIT = the ``fedit`` folder, merge = the ``merge`` folder, both mean final losses):
T_merge = merge; T_half = merge + (FedIT - merge) / 2; T_fedit = 1.1 x FedIT.

``--metric target_loss`` (default folder ``benchmarks/results/target``, the target re-run) reads
the target set's loss instead (``final_target``, each round's ``target_loss``): the headline is
the final target test loss with the in-distribution test loss beside it, the grid shows each
point's target dev loss, the targets are T50 / T90 (round-0 target loss minus 50 % / 90 % of
FedIT's best gain on its seed-mean target curve), and a second plot shows the final target test
loss against the bytes of a round.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import dataclass, field
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
    seed_of,
    setup_bytes,
    tune_run_dir,
)
from smartfed.bench.question import BYTES_FACTOR, DEFAULTS, answer
from smartfed.bench.stats import REFERENCE, TARGET_FACTOR, TIE_RULE_TABLE, mean_std, verdict
from smartfed.bench.tables import (
    ACCURACY_FILES,
    FLOOR_ACCURACY,
    GAIN_TARGET_TEXT,
    GAIN_TARGETS,
    INF,
    MERGE,
    TARGET_ENTRIES,
    TARGET_NEEDS,
    TARGET_TEXT,
    accuracy_text,
    first_reach,
    gain_targets,
    grid_edge,
    mib,
    per_round_text,
    pooled_accuracy,
    read_json,
)

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results" / "reference"
TRANSFER_FILE = "transfer_loss.json"  # `smartfed eval --benchmark loss` output, per seed run
# The grid column's loss per bench `--select_on` (what tuning chose on), and its words.
CHOICE_KEY = {"validation": "validation_loss", "target": "target_dev_loss"}
CHOICE_TEXT = {"validation": "validation loss", "target": "target dev loss"}


@dataclass(frozen=True)
class Metric:
    """What one ``--metric`` reads and how the page words it (the eval_loss texts are those of
    the committed reference pages)."""

    key: str  # the loss's key in metrics.jsonl rows and summary.json
    results: Path  # the default folder holding TASK/
    title: str
    loss: str  # the headline loss, in the table's words
    short: str  # the same in the plot's titles
    grid: str  # the grid column's loss: a --select_on name of CHOICE_KEY
    tuning: str  # how the page says each entry was tuned and tested
    targets_from: str
    caption: str  # under the plot
    target_text: dict[str, str] = field(default_factory=dict)
    # Entries of the reference run that this folder may leave out (named under the table).
    not_rerun: tuple[str, ...] = ()
    scatter: str | None = None  # the final-loss-vs-bytes-a-round plot's file, if any
    question: bool = False  # answer smartfed.bench.question (the target re-run's question)
    # The bench folders the page is about (None: every one); the others are named under it.
    entries: tuple[str, ...] | None = None


EVAL = Metric(
    key="eval_loss",
    results=RESULTS,
    title="Reference results",
    loss="test eval loss",
    short="eval loss",
    grid="validation",
    tuning="the learning rate tuned on a validation slice of the training data (grid below, "
    "chosen point in bold), then the chosen rate run on the test split once per seed.",
    targets_from="Targets, from the mean final test eval losses above:",
    caption="dashed lines are the targets; entries that train nothing (merge) are solid "
    "horizontal lines. Eval loss: mean answer-token loss on the task's held-out test split.",
    target_text=TARGET_TEXT,
)
TARGET = Metric(
    key="target_loss",
    results=BENCHMARKS / "results" / "target",
    title="Target results",
    loss="target test loss",
    short="target loss",
    grid="target",
    tuning="the learning rate tuned on the target set's dev slice (`--select_on target`: grid "
    "below with each point's final target dev loss, chosen point in bold), then the chosen rate "
    "run once per seed, scored on the target's test slice (the headline) and on the task's own "
    "test split (the in-distribution test loss).",
    targets_from="Targets, from FedIT's target loss curve (mean over seeds, round 0 first):",
    caption="dashed lines are the targets; entries that train nothing (merge) are solid "
    "horizontal lines. Target loss: mean answer-token loss on the target set's test slice "
    "(the task's other benchmark in its training format).",
    target_text=GAIN_TARGET_TEXT,
    not_rerun=("lorahub", "fedsa_lora"),
    scatter="final_vs_bytes.png",
    question=True,
    entries=TARGET_ENTRIES,
)
METRICS = {metric.key: metric for metric in (EVAL, TARGET)}


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


def _final_loss(run: Path, metric: str = EVAL.key) -> float | None:
    return final_loss(read_json(run / "summary.json"), initial_if_untrained=True, metric=metric)


def _grid_from_folders(
    bench_dir: Path, label: str, sweep: list[dict] | None, single: bool
) -> list[dict]:
    """The tuning grid of a bench whose results.json is not written yet (still running): the
    points of bench.json's sweep, each with its final validation loss and target dev loss (a
    tuning run scores the target's dev slice) once its run finished, as results.json has them.
    The sole entry of a bench with a sweep is tuned (the bench refuses a sweep it cannot tune),
    whether its first tuning run has started or not; beside others, an entry without a tuning
    folder is one the sweep does not tune (merge)."""
    if not sweep or not (single or (bench_dir / TUNE_DIR / label).is_dir()):
        return []
    names = [axis["setting"] for axis in sweep]
    grid = []
    for values in itertools.product(*(axis["values"] for axis in sweep)):
        point = dict(zip(names, values, strict=True))
        run = tune_run_dir(bench_dir, label, point)
        done = (run / "summary.json").is_file()
        grid.append({
            "point": point,
            "validation_loss": _final_loss(run) if done else None,
            "target_dev_loss": _final_loss(run, TARGET.key) if done else None,
        })  # fmt: skip
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


def _entry(
    bench_dir: Path, label: str, method: str, seeds: list[int], tuning: dict, metric: Metric = EVAL
) -> dict:
    """One row: what tuning chose and the finished seed runs of one bench entry, on ``metric``'s
    loss."""
    name = bench_dir.name if tuning["single"] else f"{bench_dir.name}/{label}"
    runs = finished_runs(bench_dir, label, seeds)
    chosen = tuning["chosen"]
    if chosen is None and tuning["grid"]:  # results.json not written yet: ask the seed runs
        # Finished ones only: the page comes from what is committed (runs land when finished).
        found = (_chosen_from_config(run, tuning["grid"]) for run in runs)
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
    if metric is not EVAL:  # (the reference pages' summary.json stays as it was)
        row["select_on"] = tuning["select_on"]
    if not runs:
        return row
    summaries = [read_json(run / "summary.json") for run in runs]
    finals = [_final_loss(run, metric.key) for run in runs]
    totals = [s.get("bytes_up", 0) + s.get("bytes_down", 0) for s in summaries]
    setups = [setup_bytes(run) for run in runs]  # one-off bytes (Fed-SB), in the totals too
    transfer = [run / TRANSFER_FILE for run in runs if (run / TRANSFER_FILE).is_file()]
    transfer_results = [read_json(path) for path in transfer]
    if any(setups):  # (absent otherwise: the reference pages' summary.json stays as it was)
        row["setup_bytes"] = statistics.mean(setups)
    row.update(
        {
            "per_seed": dict(zip(row["seeds"], finals, strict=True)),
            "final_loss": mean_std(finals),
            # A round's bytes in the steady state: the one-off bytes are shown on their own.
            "bytes_per_round": statistics.mean(
                (total - setup) / s["rounds"] if s.get("rounds") else 0
                for total, setup, s in zip(totals, setups, summaries, strict=True)
            ),
            "total_bytes": statistics.mean(totals),
            "wall_s": statistics.mean(s.get("wall_s") or 0.0 for s in summaries),
            "curve": _mean_curve([run_curve(run, metric.key) for run in runs]),
            "transfer_loss": mean_std([r["value"] for r in transfer_results]) if transfer else None,
            "transfer_data": sorted(
                {f"{r.get('dataset')}/{r.get('split')}" for r in transfer_results}
            ),
        }
    )
    if metric is not EVAL:
        row["in_distribution_loss"] = mean_std([_final_loss(run) for run in runs])
        row["target_set"] = sorted(
            {_target_set_text(s["target"]) for s in summaries if s.get("target")}
        )
        row["accuracy"] = {
            which: pooled_accuracy([read_json(p) for run in runs if (p := run / name).is_file()])
            for which, name in ACCURACY_FILES.items()
        }
    return row


def _target_set_text(target: dict[str, Any]) -> str:
    """A run summary's target set: ``data, split slice, N items``."""
    return f"{target.get('data')}, {target.get('split')} slice, {target.get('samples')} items"


def _bench_dirs(task_dir: Path) -> list[Path]:
    return sorted(p for p in task_dir.iterdir() if p.is_dir())


def studies(task_dir: Path, metric: Metric) -> list[str]:
    """The bench folders under task_dir that the metric's page leaves out (neither its entries
    nor those it marks not re-run)."""
    if metric.entries is None:
        return []
    shown = {*metric.entries, *metric.not_rerun}
    return [p.name for p in _bench_dirs(task_dir) if p.name not in shown]


def load_entries(task_dir: Path, metric: Metric = EVAL) -> list[dict]:
    """Every entry of every bench folder under task_dir that the metric's page is about,
    finished seeds or not."""
    entries = []
    left_out = set(studies(task_dir, metric))
    for bench_dir in (p for p in _bench_dirs(task_dir) if p.name not in left_out):
        results_path, bench_path = bench_dir / "results.json", bench_dir / "bench.json"
        if results_path.is_file():  # the bench finished: its own record of tuning
            results = read_json(results_path)
            methods = results.get("methods") or {}
            seeds = results.get("seeds") or []
            if bench_path.is_file():
                # A finished bench being extended to more seeds (target_all.sh's seeds stage
                # after the gate): bench.json names them first, results.json once they finish.
                seeds = max(seeds, read_json(bench_path).get("seeds") or [], key=len)
            select_on = results.get("select_on")
            labels = {label: m.get("method", label) for label, m in methods.items()}
            tunings = {
                label: {"grid": m.get("grid") or [] if m.get("tuned") else [],
                        "chosen": m.get("chosen") if m.get("tuned") else None}
                for label, m in methods.items()
            }  # fmt: skip
        elif bench_path.is_file():  # still running: bench.json and the finished tuning runs
            bench = read_json(bench_path)
            seeds = bench.get("seeds") or []
            select_on = bench.get("select_on")
            labels = {e["label"]: e.get("method", e["label"]) for e in bench.get("entries", [])}
            sweep = bench.get("sweep")
            tunings = {
                label: {
                    "grid": _grid_from_folders(bench_dir, label, sweep, len(labels) == 1),
                    "chosen": None,
                }
                for label in labels
            }
        else:
            continue
        for label, method in labels.items():
            # What tuning chose on (a bench from before --select_on: the validation loss).
            tuned = bool(tunings[label]["grid"])
            tuning = {**tunings[label], "single": len(labels) == 1,
                      "select_on": (select_on or "validation") if tuned else None}  # fmt: skip
            entries.append(_entry(bench_dir, label, method, seeds, tuning, metric))
    return entries


def reach(curve: list[dict], target: float) -> dict[str, Any] | None:
    """Round and cumulative bytes of the first evaluated round whose seed-mean loss is at or
    below target (round 0: the initial evaluation, 0 bytes); None if never."""
    # A hair of tolerance: merge reaches T_merge, its own mean, through other float sums.
    found = first_reach(_points(curve), target + 1e-12 * abs(target))
    return found and {"round": found[0], "bytes": found[1]}


def _points(curve: list[dict]) -> list[tuple[int, float, float]]:
    """A seed-mean curve as (round, mean loss, mean cumulative bytes), the shape
    :mod:`smartfed.bench.tables` reads."""
    return [(point["round"], point["mean"], point["bytes"]) for point in curve]


def _ratio(reference: float | None, value: float | None) -> float | str | None:
    """FedIT's figure over the entry's: None when either did not reach the target (or both at
    round 0), INF when only the entry needed nothing."""
    if reference is None or value is None:
        return None
    if value == 0:
        return INF if reference > 0 else None
    return reference / value


def targets(
    entries: list[dict], metric: Metric = EVAL
) -> tuple[dict[str, float | None], list[str]]:
    """The metric's targets (None where an entry they need has no finished seed) and why any is
    None: T_merge, T_half, T_fedit on the eval loss; T50, T90 on the target loss."""
    if metric is not EVAL:
        return gain_targets_of(next((e for e in entries if e["name"] == REFERENCE), None))
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


def gain_targets_of(reference: dict | None) -> tuple[dict[str, float | None], list[str]]:
    """T50 and T90 of FedIT's seed-mean curve (:func:`smartfed.bench.tables.gain_targets`), and
    why they are None when they are."""
    if reference is None:
        why = f"the `{REFERENCE}` folder (no finished seed run there)"
    else:
        values = gain_targets(_points(reference["curve"]))
        if values is not None:
            return values, []
        why = "a round 0 and a gain on FedIT's curve (its seed-mean loss never falls below it)"
    return dict.fromkeys(GAIN_TARGETS), [f"{' and '.join(GAIN_TARGETS)} need {why}: not computed"]


def summarise(entries: list[dict], metric: Metric = EVAL) -> dict[str, Any]:
    """Verdicts, rounds and bytes to each target and the ratios against FedIT, per entry."""
    finished = [e for e in entries if "final_loss" in e]
    target_values, missing = targets(finished, metric)
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
                "fedit_bytes_over_entry": _ratio(ref and ref["bytes"], mine and mine["bytes"]),
                "fedit_rounds_over_entry": _ratio(ref and ref["round"], mine and mine["round"]),
            }
    result = {"targets": target_values, "missing_targets": missing}
    if metric.question:
        # The page's planned entries count too before their folder exists.
        pending = {e["name"] for e in entries if "final_loss" not in e} | set(metric.entries or ())
        result["question"] = answer({e["name"]: e for e in finished}, pending)
    return result


def _pm(stats: dict[str, Any] | None, spec: str = ".4f") -> str:
    if not stats or stats["mean"] is None:
        return "–"
    std = f" ± {stats['std']:{spec}}" if stats["std"] is not None else ""
    return f"{stats['mean']:{spec}}{std}"


def _ratio_text(value: float | str | None) -> str:
    if value is None:
        return "–"
    return "∞" if value == INF else f"{value:.2f}"


def _grid_text(entry: dict, key: str = CHOICE_KEY[EVAL.grid]) -> str:
    """The grid's points with their ``key`` loss, the chosen one in bold."""
    if not entry["grid"]:
        return "untuned"
    cells = []
    for row in entry["grid"]:
        loss = row.get(key)
        cell = f"{_point_text(row['point'])}: {'…' if loss is None else f'{loss:.3f}'}"
        cells.append(f"**{cell}**" if row["point"] == entry["chosen"] else cell)
    return ", ".join(cells)


QUESTION_WORDS = {True: "yes", False: "no", None: "not decided yet (fewer than 2 seeds)"}


def question_lines(result: dict[str, Any] | None, metric: Metric) -> list[str]:
    """The page's answer to :mod:`smartfed.bench.question`."""
    lines = [
        "",
        "## The question",
        "",
        f"Do SmartFed's defaults (`{DEFAULTS}`) end with a lower {metric.loss} than every "
        "knowledge-free baseline that sends at least their bytes a round (a tie is not lower), "
        f"and reach FedIT r 32's best {metric.short} with at least {BYTES_FACTOR}x fewer total "
        "bytes?",
        "",
    ]
    if result is None:
        return [*lines, f"Not yet: `{DEFAULTS}` has no finished seed run."]
    rivals = result["rivals"]
    if rivals:
        ours = result["defaults_final_loss"]["mean"]
        lines += [
            f"| baseline | MiB / round | final {metric.loss} | SmartFed's defaults vs it | "
            "defaults' loss / its loss |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['entry']} | {per_round_text(r)} | {_pm(r['final_loss'])} | "
            f"{r['defaults_vs_entry'] or '– (fewer than 2 seeds)'} | "
            f"{ours / r['final_loss']['mean']:.2f}x |"
            for r in rivals
        ]
        lines.append("")
    lower = result["lower_than_every_rival"]
    waiting = result.get("pending_knowledge_free") or []
    if lower is None and waiting:
        lines.append(
            "- Lower than every such baseline: not decided yet ("
            + ", ".join(f"`{name}`" for name in waiting)
            + " without a finished seed run)."
        )
    elif not rivals:
        lines.append("- Lower than every such baseline: yes (none sends as many bytes a round).")
    else:
        lines.append(f"- Lower than every such baseline: {QUESTION_WORDS[lower]}.")
    reach_fedit = result["bytes"]
    if reach_fedit is None:
        lines.append("- FedIT r 32's best: not known (no finished `fedit` seed run).")
    else:
        head = (
            f"- FedIT r 32's best {metric.short} is {reach_fedit['fedit_best']:.4f} (its "
            f"seed-mean curve's lowest, round {reach_fedit['fedit_round']}, after "
            f"{mib(reach_fedit['fedit_bytes'])} MiB). "
        )
        if reach_fedit["defaults_round"] is None:
            lines.append(head + "SmartFed's defaults never reach it within their rounds.")
        else:
            factor = reach_fedit["fewer_by"]
            factor_text = "∞" if factor == INF else f"{factor:.1f}x"
            lines.append(
                head + f"SmartFed's defaults reach it at round {reach_fedit['defaults_round']} "
                f"after {mib(reach_fedit['defaults_bytes'])} MiB: {factor_text} fewer bytes "
                f"(at least {BYTES_FACTOR}x asked)."
            )
        if reach_fedit["holds"] is None:
            lines[-1] += " No verdict: fewer than 2 seeds on either side."

    lines.append(f"- Answer: **{QUESTION_WORDS[result['holds']]}**.")
    return lines


def _finished(entries: list[dict]) -> list[dict]:
    """The entries with a finished seed run, lowest mean final loss first (no figure: last)."""
    finished = [e for e in entries if "final_loss" in e]
    mean = lambda e: e["final_loss"]["mean"]  # noqa: E731
    return sorted(finished, key=lambda e: (mean(e) is None, mean(e) or 0.0))


def _grid_header(metric: Metric, finished: list[dict]) -> str:
    """The grid column's title: its loss and, where they differ from it, what tuning chose on."""
    shown = CHOICE_TEXT[metric.grid]
    if metric is EVAL:
        return f"grid ({shown})"
    other = {}
    for e in finished:
        if e["select_on"] not in (None, metric.grid):
            other.setdefault(CHOICE_TEXT.get(e["select_on"], e["select_on"]), []).append(e["name"])
    if not other:
        return f"grid ({shown}, the choice criterion)"
    elsewhere = "; ".join(
        f"{', '.join(names)} chosen on the {what}" for what, names in other.items()
    )
    return f"grid ({shown}; {elsewhere})"


ACCURACY_HEADER = {
    "target": "target accuracy (greedy, k/n over the scored seeds)",
    "test": "in-distribution accuracy (greedy)",
}
ACCURACY_WHAT = {"target": "the target's test slice", "test": "the in-distribution test"}


def accuracy_notes(finished: list[dict], scored: list[str]) -> list[str]:
    """Where the accuracy comes from, and whether every scored entry is at the floor."""
    if not scored:
        return []
    lines = [
        "",
        "Accuracy: `benchmarks/final_evals.sh` scores each seed run's final model greedily "
        "(MGSM-zh: the generated equation's value; GSM-Hard and GSM8K: the generated program run "
        "in the sandbox); k/n pooled over the seeds scored so far, with its 95 % Wilson "
        "interval and how many answers gave a number at all (*numeric*: an equation that "
        "evaluates, a program that returns one; right or wrong); – where no run of the entry is "
        "scored.",
    ]
    for which in scored:
        accuracies = [a for e in finished if (a := (e.get("accuracy") or {}).get(which))]
        if all(a["value"] is not None and a["value"] <= FLOOR_ACCURACY for a in accuracies):
            lines.append(
                f"On {ACCURACY_WHAT[which]} every scored entry is at the floor (at most "
                f"{FLOOR_ACCURACY:.0%}): accuracy does not separate the methods here, the loss "
                "does."
            )
    return lines


def markdown(
    task: str, command: str, entries: list[dict], summary: dict[str, Any], metric: Metric = EVAL
) -> str:
    finished = _finished(entries)
    waiting = [e for e in entries if "final_loss" not in e]
    transfer = any(e.get("transfer_loss") for e in finished)
    scored = [w for w in ACCURACY_FILES if any((e.get("accuracy") or {}).get(w) for e in finished)]
    grid_key = CHOICE_KEY[metric.grid]
    lines = [
        f"# {metric.title}: {task}",
        "",
        f"Generated by `{command}` from the bench folders beside this file (do not edit; rerun "
        "it to refresh). Each folder is one `smartfed bench` (its command line heads the "
        f"folder's `results.md`): {metric.tuning}",
        "",
    ]
    target_sets = sorted({t for e in finished for t in e.get("target_set", [])})
    if target_sets:
        lines += [f"Target set: {'; '.join(target_sets)}.", ""]
    lines += [
        f"## Final {metric.loss}",
        "",
        "Mean ± sample standard deviation over the finished seeds (n = finished / planned). "
        f"Verdict against FedIT: {TIE_RULE_TABLE}. Bytes are up + down, mean over seeds; wall "
        "time is the mean per test run."
        + (
            " MiB / round leaves out one-off bytes, shown beside it (+ once; Fed-SB's broadcast "
            "of its frozen A and B before round 1); MiB total counts them."
            if any(e.get("setup_bytes") for e in finished)
            else ""
        ),
        "",
    ]
    header = ["entry", "method", "chosen lr", _grid_header(metric, finished), "seeds n",
              f"final {metric.loss}", "vs fedit"]  # fmt: skip
    if metric is not EVAL:
        header.append("in-distribution test loss")
    header += ["MiB / round", "MiB total", "wall s / run"]
    if transfer:
        data = sorted({d for e in finished for d in e.get("transfer_data", [])})
        header.append(f"transfer loss ({', '.join(data)})")
    header += [ACCURACY_HEADER[which] for which in scored]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in finished:
        cells = [
            e["name"], e["method"], _point_text(e["chosen"]), _grid_text(e, grid_key),
            f"{e['final_loss']['n']}/{e['seeds_planned'] or 1}", _pm(e["final_loss"]),
            e["vs_fedit"] or "–",
        ]  # fmt: skip
        if metric is not EVAL:
            cells.append(_pm(e["in_distribution_loss"]))
        cells += [per_round_text(e), mib(e["total_bytes"]), f"{e['wall_s']:.0f}"]
        if transfer:
            cells.append(_pm(e.get("transfer_loss")))
        cells += [accuracy_text(e["accuracy"][which]) for which in scored]
        lines.append("| " + " | ".join(cells) + " |")
    if transfer:
        lines += [
            "",
            "Transfer loss: `benchmarks/reference_transfer.sh` evaluates each seed run's final "
            "weights; – where a run has no `transfer_loss.json` (weights are not committed, so a "
            "run whose weights are gone must be rerun to get one).",
        ]
    at_edge = [
        f"{e['name']} ({edge}, {_point_text(e['chosen'])})"
        for e in finished
        if (edge := grid_edge(e["grid"], e["chosen"]))
    ]
    if at_edge:
        lines += [
            "",
            "Chosen at an end of its grid (the best rate may lie beyond it; every entry keeps "
            f"the same grid size): {', '.join(at_edge)}.",
        ]
    lines += accuracy_notes(finished, scored)
    if waiting:
        lines += ["", "No finished test run yet (tuning or the first seed still running):"]
        lines += [f"- {e['name']} ({e['method']}): grid {_grid_text(e, grid_key)}" for e in waiting]
    folders = {e["folder"] for e in entries}
    not_rerun = [name for name in metric.not_rerun if name not in folders]
    if not_rerun:
        lines += [
            "",
            f"Not re-run: {', '.join(not_rerun)} (no folder here; their in-distribution results "
            "are in `benchmarks/results/reference/`).",
        ]
    if summary.get("studies"):
        lines += [
            "",
            f"Seed-0 studies in this folder, not on this page (`benchmarks/gate_table.py` -> "
            f"`gate.md`, `benchmarks/defaults_table.py` -> `defaults.md`): "
            f"{', '.join(summary['studies'])}.",
        ]
    if metric.question:
        lines += question_lines(summary.get("question"), metric)
    lines += [
        "",
        "## Rounds and bytes to target",
        "",
        f"The paper states its claims as figures to reach a target loss. {metric.targets_from}",
        "",
    ]
    for name, value in summary["targets"].items():
        shown = f"{value:.4f}" if value is not None else "not computed"
        lines.append(f"- **{name}** = {shown}: {metric.target_text[name]}.")
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
                f"{_ratio_text(t['fedit_bytes_over_entry'])} | "
                f"{_ratio_text(t['fedit_rounds_over_entry'])} |"
            )
        lines.append("")
    seeds = sorted({s for e in finished for s in e["per_seed"]})
    lines += [
        f"## Final {metric.loss} per seed",
        "",
        "| entry | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for e in finished:
        cells = [f"{e['per_seed'][s]:.4f}" if s in e["per_seed"] else "–" for s in seeds]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![{metric.short} per round and per MiB](reference.png)",
        "",
        f"Plot: {metric.loss}, mean over seeds with the sample standard deviation as error bars, "
        "per round and per cumulative MiB (log scale: round 0, 0 bytes, is left out there); "
        f"{metric.caption}",
        "",
    ]
    if metric.scatter:
        lines += [
            f"![final {metric.loss} per MiB a round]({metric.scatter})",
            "",
            f"Plot: final {metric.loss} (mean ± std over seeds, as in the first table) against "
            "the MiB an entry sends a round (log scale), one point per entry; entries that send "
            "nothing are solid horizontal lines.",
            "",
        ]
    return "\n".join(lines)


# The targets' lines in the plots.
STYLES = {"T_merge": "gray", "T_half": "tab:gray", "T_fedit": "dimgray", "T50": "gray",
          "T90": "dimgray"}  # fmt: skip
DASHES = {"T_merge": (0, (5, 3)), "T_half": (0, (2, 2)), "T_fedit": (0, (8, 2, 2, 2)),
          "T50": (0, (5, 3)), "T90": (0, (8, 2, 2, 2))}  # fmt: skip


# One look per entry, the same in both plots: tab10's colours alone repeat after 10 entries.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def entry_styles(entries: list[dict]) -> dict[str, dict[str, str]]:
    """Colour and marker per entry name, in the table's order; no two entries share both."""
    colours = plt.get_cmap("tab20").colors
    return {
        e["name"]: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)]}
        for i, e in enumerate(_finished(entries))
    }


def plot(
    task: str, entries: list[dict], summary: dict[str, Any], path: Path, metric: Metric = EVAL
) -> None:
    figure, (per_round, per_mib) = plt.subplots(1, 2, figsize=(13, 5))
    styles = entry_styles(entries)
    for e in _finished(entries):  # legend in the table's order
        curve = e["curve"]
        if not any(p["round"] > 0 for p in curve):  # sends nothing: one level, no x extent
            if e["final_loss"]["mean"] is None:
                continue
            for axis in (per_round, per_mib):
                axis.axhline(e["final_loss"]["mean"], color="black", linewidth=1.2,
                             label=f"{e['name']} (sends nothing)")  # fmt: skip
            continue
        errors = [p["std"] or 0 for p in curve]
        per_round.errorbar(
            [p["round"] for p in curve], [p["mean"] for p in curve], yerr=errors,
            markersize=4, capsize=3, label=f"{e['name']} (n={e['final_loss']['n']})",
            **styles[e["name"]],
        )  # fmt: skip
        sent = [(p, err) for p, err in zip(curve, errors, strict=True) if p["bytes"] > 0]
        per_mib.errorbar(
            [p["bytes"] / 2**20 for p, _ in sent], [p["mean"] for p, _ in sent],
            yerr=[err for _, err in sent], markersize=4, capsize=3, **styles[e["name"]],
        )  # fmt: skip
    for name, value in summary["targets"].items():
        if value is None:
            continue
        for axis in (per_round, per_mib):
            axis.axhline(value, color=STYLES[name], linestyle=DASHES[name], linewidth=1,
                         label=f"{name} = {value:.3f}" if axis is per_round else None)  # fmt: skip
    per_mib.set_xscale("log")
    per_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    per_round.set_xlabel("round")
    per_mib.set_xlabel("cumulative MiB (up + down)")
    for axis in (per_round, per_mib):
        axis.set_ylabel(f"{metric.loss} (mean ± std over seeds)")
        axis.grid(alpha=0.3)
    per_round.set_title(f"{task}: {metric.short} per round")
    per_mib.set_title(f"{task}: {metric.short} per traffic")
    per_round.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_final_vs_bytes(task: str, entries: list[dict], path: Path, metric: Metric) -> None:
    """Final loss (mean ± std over seeds) against the MiB of a round, one point per entry."""
    figure, axis = plt.subplots(figsize=(7, 5))
    styles = entry_styles(entries)
    for e in _finished(entries):
        loss = e["final_loss"]
        if loss["mean"] is None:
            continue
        if e["bytes_per_round"] <= 0:  # no place on a log axis: a level
            axis.axhline(loss["mean"], color="black", linewidth=1.2,
                         label=f"{e['name']} (sends nothing)")  # fmt: skip
            continue
        x = e["bytes_per_round"] / 2**20
        axis.errorbar([x], [loss["mean"]], yerr=[loss["std"] or 0], capsize=3,
                      label=f"{e['name']} (n={loss['n']})", **styles[e["name"]])  # fmt: skip
        axis.annotate(e["name"], (x, loss["mean"]), textcoords="offset points", xytext=(4, 4),
                      fontsize=7)  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("MiB a round (up + down, mean over seeds)")
    axis.set_ylabel(f"final {metric.loss} (mean ± std over seeds)")
    axis.set_title(f"{task}: final {metric.short} per traffic a round")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _json_ready(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "transfer_data"}


def write_outputs(
    task: str,
    task_dir: Path,
    command: str,
    out_dir: Path | None = None,
    *,
    with_plot: bool = True,
    metric: str = EVAL.key,
) -> str:
    """README.md, reference.png (and the metric's scatter plot; unless ``with_plot`` is off)
    and summary.json in ``out_dir`` (default task_dir), on ``metric``'s loss (``eval_loss`` or
    ``target_loss``); returns the markdown."""
    spec = METRICS[metric]
    if not task_dir.is_dir():
        raise SystemExit(f"{task_dir}: no such folder (benchmarks/reference.sh {task} fills it)")
    out_dir = task_dir if out_dir is None else out_dir
    entries = load_entries(task_dir, spec)
    if not any("final_loss" in e for e in entries):
        raise SystemExit(f"{task_dir}: no finished seed run in any bench folder yet")
    summary = {**summarise(entries, spec), "studies": studies(task_dir, spec)}
    text = markdown(task, command, entries, summary, spec)
    (out_dir / "README.md").write_text(text, encoding="utf-8")
    if with_plot:
        plot(task, entries, summary, out_dir / "reference.png", spec)
        if spec.scatter:
            plot_final_vs_bytes(task, entries, out_dir / spec.scatter, spec)
    record = {
        "task": task,
        # The reference pages predate --metric: their summary.json stays as it was.
        **({} if spec is EVAL else {"metric": spec.key}),
        "generated_by": command,
        "tie_rule": TIE_RULE_TABLE,
        "targets": summary["targets"],
        "target_definitions": spec.target_text,
        "missing_targets": summary["missing_targets"],
        **({"question": summary["question"]} if spec.question else {}),
        **({"studies": summary["studies"]} if spec.entries is not None else {}),
        "ratios": "FedIT's figure / the entry's; null: either did not reach the target; "
        f'"{INF}": the entry reached it at round 0 and FedIT did not',
        "entries": {e["name"]: _json_ready(e) for e in entries},
    }
    (out_dir / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return text


def command_line(task: str, results: Path, metric: str = EVAL.key) -> str:
    """How the page names the command that generated it (a relative --results as given)."""
    command = f".venv/bin/python benchmarks/reference_table.py {task}"
    if metric != EVAL.key:
        command += f" --metric {metric}"
    if results.resolve() != METRICS[metric].results:
        command += f" --results {results}"
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="task folder under the results folder, e.g. cn_math")
    parser.add_argument(
        "--results", type=Path, default=None, metavar="DIR",
        help="folder holding TASK/ (default benchmarks/results/reference; with --metric "
        "target_loss benchmarks/results/target)",
    )  # fmt: skip
    parser.add_argument(
        "--metric", choices=list(METRICS), default=EVAL.key,
        help="eval_loss: the in-distribution test loss (default); target_loss: the target "
        "set's test loss, with T50 / T90 on FedIT's target curve",
    )  # fmt: skip
    args = parser.parse_args()
    results = args.results if args.results is not None else METRICS[args.metric].results
    command = command_line(args.task, results, args.metric)
    print(write_outputs(args.task, results / args.task, command, metric=args.metric))


if __name__ == "__main__":
    main()
