"""``smartfed report``: the plots and a markdown page for a run directory or a bench folder.

A bench folder (it has bench.json) gets: eval loss vs round and vs cumulative bytes for all
entries, quota heatmaps of the entries whose quotas moved, expert usage of every entry that
wrote usage.json, partition sizes, and the results table. A single run directory gets the same
for itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.bench.layout import loss_curve, read_run
from smartfed.bench.results import report_run_dirs, results_markdown
from smartfed.errors import ConfigError, DamagedFileError
from smartfed.report import plots
from smartfed.utils.io import read_json, write_text_atomic


def _read_json(path: Path) -> Any:
    """A JSON object, or None where there is none; a damaged one is refused in one line."""
    return read_json(path) if path.exists() else None


def _finished_runs(folder: Path, dirs: dict[str, str]) -> dict[str, dict[str, Any]]:
    runs = {}
    for label, name in dirs.items():
        run_dir = folder / name
        if (run_dir / "summary.json").is_file():
            runs[label] = read_run(run_dir)
    return runs


def write_report(folder: str | Path, output: str | Path | None = None) -> Path:
    """Write PNGs and report.md into ``output`` (default: ``folder``); return the page path."""
    folder = Path(folder)
    out = Path(output) if output else folder
    out.mkdir(parents=True, exist_ok=True)
    bench = _read_json(folder / "bench.json")
    if bench is not None:
        entries, settings = bench.get("entries"), bench.get("settings")
        if (
            not isinstance(entries, list)
            or not isinstance(settings, dict)
            or not all(isinstance(e, dict) and isinstance(e.get("label"), str) for e in entries)
        ):
            raise DamagedFileError(f"{folder / 'bench.json'} is damaged (no entries or settings)")
        dirs = report_run_dirs(bench)  # with --seeds: each entry's first seed
        runs = _finished_runs(folder, dirs)
        title = bench["settings"].get("task", "")
    elif (folder / "summary.json").is_file():
        runs = {folder.name: read_run(folder)}
        dirs = {folder.name: folder.name}
        title = (_read_json(folder / "config.json") or {}).get("task", "")
        folder = folder.parent  # run directories are looked up as folder / label below
    else:
        raise ConfigError(
            f"{folder}: neither a bench folder (bench.json) nor a finished run directory "
            "(summary.json)"
        )
    if not runs:
        raise ConfigError(f"{folder}: no finished runs to report yet")

    lines = [f"# SmartFed report: {title}", ""]
    images = []
    # The target set (the task's other benchmark) first, where the runs scored one.
    if any(loss_curve(run, "target_loss") for run in runs.values()):
        images += [
            (
                "Target-set loss per round",
                plots.loss_vs_round(runs, out / "target_vs_round.png", title, "target_loss"),
            ),
            (
                "Target-set loss vs cumulative communication",
                plots.loss_vs_bytes(runs, out / "target_vs_bytes.png", title, "target_loss"),
            ),
        ]
    images += [
        ("Eval loss per round", plots.loss_vs_round(runs, out / "loss_vs_round.png", title)),
        (
            "Eval loss vs cumulative communication",
            plots.loss_vs_bytes(runs, out / "loss_vs_bytes.png", title),
        ),
    ]
    # Plots follow what each run wrote, not its method's name: a quota heatmap where quotas
    # moved (EEQA at work; a constant table says nothing a plot would), a usage chart where the
    # run wrote usage.json (routing methods).
    for label, run in runs.items():
        run_dir = folder / dirs[label]
        if _quotas_moved(run["rows"]):
            heatmap = plots.quota_heatmap(
                run, _matrices(run_dir), out / f"quotas_{label}.png", f"{label}: K per matrix"
            )
            images.append((f"EEQA quotas per matrix over rounds ({label})", heatmap))
        usage = _read_json(run_dir / "usage.json")
        if usage and isinstance(usage.get("matrices"), dict):
            chart = plots.expert_usage(
                usage["matrices"], out / f"usage_{label}.png", f"{label}: routing share"
            )
            images.append((f"Expert usage per matrix ({label})", chart))
    first = next(iter(runs))
    partitions = _read_json(folder / dirs[first] / "partitions.json")
    if partitions and isinstance(partitions.get("clients"), list):
        images.append(
            (
                "Per-client partition sizes",
                plots.partition_sizes(partitions, out / "partitions.png", title),
            )
        )
    for caption, path in images:
        lines += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    results = _read_json(folder / "results.json") if bench is not None else None
    if results:
        lines += [results_markdown(results).split("\n", 2)[2]]
    else:
        for label, run in runs.items():
            lines += [f"## Summary ({label})", "", "```json", json.dumps(run["summary"], indent=1)]
            lines += ["```", ""]
    page = out / "report.md"
    write_text_atomic(page, "\n".join(lines))
    return page


def _quotas_moved(rows: list[dict[str, Any]]) -> bool:
    tables = {json.dumps(r["quotas"]) for r in rows if r.get("quotas")}
    return len(tables) > 1 or any(len(set(r["quotas"])) > 1 for r in rows if r.get("quotas"))


def _matrices(run_dir: Path) -> list[str] | None:
    """Matrix names in quota order: from the final routers' config, else from usage.json (a
    committed bench keeps no weights, hence no final/)."""
    saved = _read_json(run_dir / "final" / "more_config.json")
    if saved and saved.get("matrices"):
        return saved["matrices"]
    usage = _read_json(run_dir / "usage.json")
    return list(usage["matrices"]) if usage and usage.get("matrices") else None
