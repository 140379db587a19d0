"""Where a bench folder keeps its runs, and what a finished run recorded (no torch).

    BENCH_DIR/<label>/                      a bench without --seeds: the entry's one run
    BENCH_DIR/<label>/seed<k>/              with --seeds: the entry's run on seed k
    BENCH_DIR/tune/<label>/<point>/         with --sweep: one validation run per grid point

``<point>`` is ``setting=value`` (several swept settings joined by ``,``). A run is finished
when its summary.json exists. ``smartfed.bench.runner`` writes this layout; the result scripts
of ``benchmarks/`` read it through the same functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.errors import DamagedFileError
from smartfed.utils.io import read_json, read_jsonl

TUNE_DIR = "tune"


def point_name(point: dict[str, Any]) -> str:
    """The folder name of one grid point, e.g. ``learning_rate=0.001``."""
    return ",".join(f"{name}={value}" for name, value in point.items())


def seed_folder(seed: int) -> str:
    return f"seed{seed}"


def seed_of(run_dir: Path) -> int:
    """The seed of a ``seed<k>`` run folder."""
    return int(run_dir.name.removeprefix("seed"))


def tune_run_dir(bench_dir: Path, label: str, point: dict[str, Any]) -> Path:
    return bench_dir / TUNE_DIR / label / point_name(point)


def run_dir(bench_dir: Path, label: str, seed: int | None = None) -> Path:
    """An entry's run on ``seed``, or its one run in a bench without seeds (``seed`` None)."""
    return bench_dir / label if seed is None else bench_dir / label / seed_folder(seed)


def entry_run_dirs(bench_dir: Path, label: str, seeds: list[int] | None) -> list[Path]:
    """Every planned run folder of one entry: one per seed, or the entry's own folder in a
    bench without seeds."""
    return [run_dir(bench_dir, label, seed) for seed in seeds or [None]]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def finished_runs(bench_dir: Path, label: str, seeds: list[int] | None) -> list[Path]:
    """The run folders of one entry that finished, in seed order."""
    return [run for run in entry_run_dirs(bench_dir, label, seeds) if is_finished(run)]


def read_run(run_dir: Path) -> dict[str, Any]:
    """summary.json + metrics.jsonl of one finished run; a missing or damaged one raises a
    one-line :class:`~smartfed.errors.DamagedFileError` naming the file."""
    path = run_dir / "metrics.jsonl"
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("round"), int):
            raise DamagedFileError(f"{path}: row {number} is damaged (no round number)")
    return {"summary": read_json(run_dir / "summary.json"), "rows": rows}


_FINAL_KEYS = {"eval_loss": "final_eval", "target_loss": "final_target"}


def final_loss(
    summary: dict[str, Any], *, initial_if_untrained: bool = False, metric: str = "eval_loss"
) -> float | None:
    """The final loss a run's summary.json records: ``eval_loss`` (in-distribution) or
    ``target_loss`` (the target set). With ``initial_if_untrained`` a run that trained nothing
    (merge: no final evaluation) gives its initial one, which is then its final model's."""
    final = (summary.get(_FINAL_KEYS[metric]) or {}).get(metric)
    if final is None and initial_if_untrained:
        final = (summary.get("initial_eval") or {}).get(metric)
    return final


def loss_curve(run: dict[str, Any], metric: str = "eval_loss") -> list[tuple[int, float]]:
    """(round, loss) of a :func:`read_run` result, from round 0 (the starting model) on;
    ``metric`` is ``eval_loss`` (the in-distribution held-out loss) or ``target_loss`` (the
    task's target set)."""
    curve = []
    initial = run["summary"].get("initial_eval") or {}
    if metric in initial:
        curve.append((0, initial[metric]))
    curve += [(row["round"], row[metric]) for row in run["rows"] if metric in row]
    return curve


def run_curve(run_dir: Path, metric: str = "eval_loss") -> list[tuple[int, float, int]]:
    """(round, loss, cumulative bytes up + down after that round) of one run folder, starting
    with round 0 (the initial evaluation, nothing sent yet) when summary.json records it.
    ``metric``: ``eval_loss`` (in-distribution) or ``target_loss`` (the target set). Bytes count
    every round, evaluated or not: a round without an evaluation still sent its traffic.
    Missing files give what is there (a run in progress)."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    initial = (summary.get("initial_eval") or {}).get(metric)
    curve = [] if initial is None else [(0, initial, 0)]
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    total = 0
    for line in filter(None, lines):
        row = json.loads(line)
        total += row.get("bytes_up", 0) + row.get("bytes_down", 0)
        if metric in row:
            curve.append((row["round"], row[metric], total))
    return curve


def setup_bytes(run_dir: Path) -> int:
    """The one-off bytes of a run folder (``bytes_setup`` in metrics.jsonl: Fed-SB's broadcast of
    its frozen A and B before round 1), already counted in that round's ``bytes_down``; 0 for a
    method without one."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    return sum(json.loads(line).get("bytes_setup", 0) for line in filter(None, lines))
