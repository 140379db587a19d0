"""Run bench entries one after the other into one folder; resumable per method.

    BENCH_DIR/bench.json     the shared settings and the entries (a rerun must match them)
    BENCH_DIR/<label>/       one ordinary run directory per entry
    BENCH_DIR/results.json   per-entry numbers (smartfed.bench.results)
    BENCH_DIR/results.md     the same as a table

A finished entry (its summary.json exists) is skipped; an interrupted one resumes from its last
checkpoint, so rerunning the same command after a crash completes the bench.

With ``--sweep`` or several ``--seeds`` the runs go to BENCH_DIR/tune/<label>/<point>/ (tuning
on the validation slice) and BENCH_DIR/<label>/seed<k>/ (the chosen point on the test split);
see :mod:`smartfed.bench.sweep`. bench.json then also records the sweep and the seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smartfed.assembly.config import SettingValues
from smartfed.bench.layout import final_loss, is_finished, point_name, read_run, tune_run_dir
from smartfed.bench.layout import run_dir as entry_run_dir
from smartfed.bench.results import bench_results, results_markdown, seeded_results
from smartfed.bench.sweep import Sweep, check_sweep, choose, untuned_reason
from smartfed.bench.variants import BenchEntry
from smartfed.engine.config import RESUMABLE_HARDWARE, RunConfig
from smartfed.errors import ConfigError, DamagedFileError, StorageError
from smartfed.utils.io import read_json, write_json_atomic, write_text_atomic

# Settings that are per entry or bookkeeping, not part of what all entries must share.
_PER_ENTRY = {"method", "output_dir", "resume", "overwrite", "preset"}


def shared_settings(config: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in config.shared_dict().items() if k not in _PER_ENTRY}


def _check_same_bench(path: Path, record: dict[str, Any]) -> None:
    if not path.is_file():
        return
    saved = read_json(path)
    for key, flag in (("sweep", "--sweep"), ("seeds", "--seeds")):
        if not _extends(key, saved.get(key), record.get(key)):
            raise ConfigError(
                f"{path.parent} holds a bench with another {flag} ({saved.get(key)!r} there, "
                f"{record.get(key)!r} now); rerun it with the same {flag} (more values or seeds "
                "may be added) or choose another --output_dir"
            )
    # A setting missing on one side (a bench written before it existed) counts as its default.
    defaults = RunConfig.defaults()
    settings = saved.get("settings", {})
    if not isinstance(settings, dict):
        raise DamagedFileError(f"{path} is damaged (settings is not a table)")
    there = {**defaults, **settings}
    now = {**defaults, **record["settings"]}
    # Hardware settings (--device) may change when a bench is continued, as for a run.
    differing = sorted(
        key
        for key in set(there) | set(now)
        if there.get(key) != now.get(key) and key not in RESUMABLE_HARDWARE
    )
    if differing:
        key = differing[0]
        raise ConfigError(
            f"{path.parent} holds a bench with other settings ({key}: "
            f"{there.get(key)!r} there, {now.get(key)!r} now); "
            "rerun it with the same settings or choose another --output_dir"
        )


def _extends(key: str, there: Any, now: Any) -> bool:
    """Whether a rerun's sweep or seeds keep every finished run meaningful: the same swept
    settings with values only added, and seeds only added after the same first seed (tuning
    runs with the first). A chosen point that changes is caught per run (:func:`_run`)."""
    if there == now:
        return True
    if key == "seeds":
        return bool(there) and bool(now) and now[0] == there[0] and set(there) <= set(now)
    if not there or not now or len(there) != len(now):
        return False
    return all(
        a["setting"] == b["setting"] and set(map(str, a["values"])) <= set(map(str, b["values"]))
        for a, b in zip(there, now, strict=True)
    )


def run_bench(
    values: SettingValues,
    entries: list[BenchEntry],
    bench_dir: str | Path,
    command: str,
    *,
    sweep: Sweep | None = None,
    seeds: list[int] | None = None,
    tune_only: bool = False,
    select_on: str = "validation",
) -> dict[str, Any]:
    """Run every entry (skipping finished ones), then write results.json and results.md.

    ``values`` are the bench's settings; each entry's config takes the method settings its
    method declares (:meth:`SettingValues.config_for`), then the entry's own overrides. With
    ``sweep`` or ``seeds`` see :func:`run_sweep_bench`."""
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
    if sweep is not None or seeds is not None or tune_only:
        return run_sweep_bench(
            values, entries, bench_dir, record, base, sweep=sweep, seeds=seeds,
            tune_only=tune_only, select_on=select_on,
        )  # fmt: skip
    _check_same_bench(bench_dir / "bench.json", record)
    write_json_atomic(bench_dir / "bench.json", record)
    for number, entry in enumerate(entries, start=1):
        run_dir = entry_run_dir(bench_dir, entry.label)
        if is_finished(run_dir):
            print(f"[{number}/{len(entries)}] {entry.label}: done, skipped", flush=True)
            continue
        resume = _started(run_dir)
        overrides = {**entry.overrides, "output_dir": str(run_dir), "resume": resume}
        config = values.config_for(entry.method, overrides, strict=False)
        verb = "resuming" if resume else "running"
        print(f"[{number}/{len(entries)}] {entry.label}: {verb} ({entry.description})", flush=True)
        _federate(config)
    runs = {e.label: read_run(entry_run_dir(bench_dir, e.label)) for e in entries}
    results = bench_results(base.task, command, runs, record["settings"])
    write_json_atomic(bench_dir / "results.json", results)
    write_text_atomic(bench_dir / "results.md", results_markdown(results))
    return results


def _run(config: RunConfig, run_dir: Path, name: str, description: str) -> None:
    """One run into ``run_dir``: skipped when finished, resumed when interrupted."""
    _check_same_run(run_dir, config)
    if is_finished(run_dir):
        print(f"{name}: done, skipped", flush=True)
        return
    resume = _started(run_dir)
    config.resume = resume
    print(f"{name}: {'resuming' if resume else 'running'} ({description})", flush=True)
    _federate(config)


def _started(run_dir: Path) -> bool:
    """Whether an interrupted run is there to continue (it wrote config.json; a run that
    committed no round yet starts again from round 1 under --resume)."""
    return (run_dir / "config.json").is_file()


def _federate(config: RunConfig) -> None:
    from smartfed.federation.runner import run_federated

    try:
        run_federated(config)
    except StorageError as exc:
        # The run's own hint names `smartfed run --resume`; a bench continues by itself.
        cause = exc.__cause__ if isinstance(exc.__cause__, StorageError) else exc
        raise StorageError(
            f"{cause}; once fixed, rerun the same smartfed bench command: it continues from "
            "the last committed round"
        ) from None


def _check_same_run(run_dir: Path, config: RunConfig) -> None:
    """Refuse to reuse a run made with other settings (an extended grid that now chooses
    another point for the seed runs), rather than report it under the new choice."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    saved = read_json(path).get("method_settings")
    if not isinstance(saved, dict):
        raise DamagedFileError(f"{path} is damaged (no method_settings)")
    planned = config.to_dict()
    for key in sorted(set(saved) | set(planned["method_settings"])):
        there, now = saved.get(key), planned["method_settings"].get(key)
        if there != now:
            raise ConfigError(
                f"{run_dir} was run with {key}={there!r}, this bench now plans {key}={now!r}; "
                "remove that folder to rerun it, or choose another --output_dir"
            )


def run_sweep_bench(
    values: SettingValues,
    entries: list[BenchEntry],
    bench_dir: Path,
    record: dict[str, Any],
    base: RunConfig,
    *,
    sweep: Sweep | None,
    seeds: list[int] | None,
    tune_only: bool = False,
    select_on: str = "validation",
) -> dict[str, Any]:
    """Tune on dev data, then run the chosen points for every seed.

    Phase 1 (with ``sweep``): every tunable entry runs every grid point with
    ``eval_split=validation`` (a slice held out of the training data), ``target_split=dev`` and
    the first seed into tune/<label>/<point>/; the lowest final loss chooses
    (:func:`smartfed.bench.sweep.choose`): the target set's dev loss with
    ``select_on="target"``, else the validation loss. Neither the task's test split nor the
    target's test slice is read. Phase 2 (skipped with
    ``tune_only``): every entry runs its chosen point (untuned: its defaults) once per seed
    into <label>/seed<k>/ with the bench's own eval split. Every config is built before the
    first run, so a bad grid value fails in one line before any work."""
    seeds = list(seeds) if seeds is not None else [base.seed]
    if sweep is not None:
        check_sweep(sweep, entries)
        if base.eval_split != "test":
            raise ConfigError(
                "--sweep tunes on the validation slice and reports on the test split: do not "
                "give --eval_split"
            )
        if select_on == "validation" and base.eval_samples == 0:
            raise ConfigError("--sweep chooses on the validation loss: --eval_samples must be > 0")
        if select_on == "target" and not base.target_samples:
            raise ConfigError(
                f"--select_on target: task {base.task} has no target set (or --target_samples "
                "is 0); give --target_data or --select_on validation"
            )
    elif tune_only:
        raise ConfigError("--tune_only needs --sweep")
    settings = {k: v for k, v in record["settings"].items() if k != "seed"}  # that is seeds
    record = {**record, "settings": settings, "sweep": sweep.to_record() if sweep else None,
              "seeds": seeds, "select_on": select_on if sweep else None}  # fmt: skip
    _check_same_bench(bench_dir / "bench.json", record)

    grid = sweep.grid if sweep else []
    reasons = {e.label: untuned_reason(e, sweep) if sweep else "no --sweep" for e in entries}
    tune_plan = []  # (entry, point, run_dir, config)
    for entry in entries:
        if reasons[entry.label] is None:
            for point in grid:
                run_dir = tune_run_dir(bench_dir, entry.label, point)
                last_round = {**entry.overrides, **point}.get("num_rounds", base.num_rounds)
                overrides = {
                    **entry.overrides,
                    **point,
                    "seed": seeds[0],
                    "output_dir": str(run_dir),
                    "eval_split": "validation",
                    "target_split": "dev",  # the target's test slice is never read in tuning
                    "metric_samples": 0,  # the task benchmark is test data
                    # The choice reads the final losses only: no evaluation between.
                    "eval_every": last_round,
                    "target_every": last_round,
                }
                config = values.config_for(entry.method, overrides, strict=False)
                tune_plan.append((entry, point, run_dir, config))
    for entry in entries:  # the test-split runs' settings fail now too, not after tuning
        for point in grid[:1] if reasons[entry.label] is None else [{}]:
            values.config_for(entry.method, {**entry.overrides, **point}, strict=False)
    write_json_atomic(bench_dir / "bench.json", record)

    total = len(tune_plan)
    for number, (entry, point, run_dir, config) in enumerate(tune_plan, start=1):
        name = f"[tune {number}/{total}] {entry.label} {point_name(point)}"
        _run(config, run_dir, name, "validation split and target dev slice")
    choice_key = {"target": "target_dev_loss", "validation": "validation_loss"}[select_on]
    what = {"target": "target dev loss", "validation": "validation loss"}[select_on]
    tuning: dict[str, dict[str, Any]] = {}
    for entry in entries:
        rows = []
        for e, point, run_dir, _ in tune_plan:
            if e.label != entry.label:
                continue
            summary = read_run(run_dir)["summary"]
            rows.append({
                "point": point,
                "run_dir": str(run_dir.relative_to(bench_dir)),
                "validation_loss": final_loss(summary),
                "target_dev_loss": final_loss(summary, metric="target_loss"),
            })  # fmt: skip
        best = choose([row[choice_key] for row in rows]) if rows else None
        if best is None and rows:  # nothing finite to choose from: the first, as on ties
            print(f"{entry.label}: no grid point has a finite {what}", flush=True)
        tuning[entry.label] = {
            "method": entry.method,
            "tuned": bool(rows),
            "untuned_reason": reasons[entry.label],
            "grid": rows,
            "chosen": rows[best if best is not None else 0]["point"] if rows else None,
            "chosen_by": None
            if not rows
            else f"lowest final {what}"
            if best is not None
            else f"first grid point (no finite {what})",
        }

    runs_by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    if not tune_only:
        final_plan = []
        for entry in entries:
            chosen = tuning[entry.label]["chosen"] or {}
            for seed in seeds:
                run_dir = entry_run_dir(bench_dir, entry.label, seed)
                overrides = {**entry.overrides, **chosen, "seed": seed, "output_dir": str(run_dir)}
                config = values.config_for(entry.method, overrides, strict=False)
                final_plan.append((entry, seed, run_dir, config))
        total = len(final_plan)
        for number, (entry, seed, run_dir, config) in enumerate(final_plan, start=1):
            _run(config, run_dir, f"[{number}/{total}] {entry.label} seed{seed}", entry.description)
        for entry, seed, run_dir, _ in final_plan:
            runs_by_seed.setdefault(seed, {})[entry.label] = read_run(run_dir)
    results = seeded_results(
        base.task,
        record["command"],
        record["settings"],
        sweep=record["sweep"],
        seeds=seeds,
        tuning=tuning,
        runs_by_seed=runs_by_seed,
        select_on=select_on,
    )
    write_json_atomic(bench_dir / "results.json", results)
    write_text_atomic(bench_dir / "results.md", results_markdown(results))
    return results
