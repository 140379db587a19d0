"""Run bench entries one after the other into one folder; resumable per method.

    BENCH_DIR/bench.json     the shared settings and the entries (a rerun must match them)
    BENCH_DIR/<label>/       one ordinary run directory per entry
    BENCH_DIR/results.json   per-entry numbers (smartfed.bench.results)
    BENCH_DIR/results.md     the same as a table

A finished entry (its summary.json exists) is skipped; an interrupted one resumes from its last
checkpoint, so rerunning the same command after a crash completes the bench.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.assembly.config import SettingValues
from smartfed.bench.results import bench_results, read_run, results_markdown
from smartfed.bench.variants import BenchEntry
from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.utils.io import write_json_atomic, write_text_atomic

# Settings that are per entry or bookkeeping, not part of what all entries must share.
_PER_ENTRY = {"method", "output_dir", "resume", "preset"}


def shared_settings(config: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in config.shared_dict().items() if k not in _PER_ENTRY}


def _check_same_bench(path: Path, record: dict[str, Any]) -> None:
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    differing = sorted(
        key
        for key in set(saved.get("settings", {})) | set(record["settings"])
        if saved.get("settings", {}).get(key) != record["settings"].get(key)
    )
    if differing:
        key = differing[0]
        raise ConfigError(
            f"{path.parent} holds a bench with other settings ({key}: "
            f"{saved['settings'].get(key)!r} there, {record['settings'].get(key)!r} now); "
            "rerun it with the same settings or choose another --output_dir"
        )


def run_bench(
    values: SettingValues, entries: list[BenchEntry], bench_dir: str | Path, command: str
) -> dict[str, Any]:
    """Run every entry (skipping finished ones), then write results.json and results.md.

    ``values`` are the bench's settings; each entry's config takes the method settings its
    method declares (:meth:`SettingValues.config_for`), then the entry's own overrides."""
    from smartfed.federation.runner import run_federated

    bench_dir = Path(bench_dir)
    values.check_declared_by([e.method for e in entries])
    base = values.config_for(entries[0].method, strict=False)
    record = {
        "command": command,
        "settings": {**shared_settings(base), "method_settings": values.method},
        "entries": [
            {"label": e.label, "method": e.method, "overrides": e.overrides} for e in entries
        ],
    }
    _check_same_bench(bench_dir / "bench.json", record)
    write_json_atomic(bench_dir / "bench.json", record)
    for number, entry in enumerate(entries, start=1):
        run_dir = bench_dir / entry.label
        if (run_dir / "summary.json").is_file():
            print(f"[{number}/{len(entries)}] {entry.label}: done, skipped", flush=True)
            continue
        resume = (run_dir / "checkpoints").is_dir()
        overrides = {**entry.overrides, "output_dir": str(run_dir), "resume": resume}
        config = values.config_for(entry.method, overrides, strict=False)
        verb = "resuming" if resume else "running"
        print(f"[{number}/{len(entries)}] {entry.label}: {verb} ({entry.description})", flush=True)
        run_federated(config)
    runs = {e.label: read_run(bench_dir / e.label) for e in entries}
    results = bench_results(base.task, command, runs, record["settings"])
    write_json_atomic(bench_dir / "results.json", results)
    write_text_atomic(bench_dir / "results.md", results_markdown(results))
    return results
