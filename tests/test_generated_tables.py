"""The committed pages of the reference results are what the scripts generate now: rerun
``benchmarks/reference_table.py`` (both tasks, the data-limited folder and the target re-run's
pages from its committed runs), ``gate_table.py``, ``defaults_table.py`` and
``benchmarks/claims.py`` into a temporary folder and compare byte for byte with the committed
README.md / summary.json / claims.md. A change to the shared results library
(``smartfed.bench``) that alters a figure, a verdict word or a rule's wording fails here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.benchmark_scripts import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# (task, --results as the committed page's command gives it, folder holding TASK/)
TABLES = [
    ("cn_math", None, RESULTS / "reference"),
    ("math_code", None, RESULTS / "reference"),
    ("cn_math", Path("benchmarks/results/data_limited"), RESULTS / "data_limited"),
]


@pytest.mark.parametrize(("task", "results_arg", "results"), TABLES)
def test_reference_tables_are_reproduced(task, results_arg, results, tmp_path, monkeypatch):
    table = import_benchmark("reference_table")
    monkeypatch.chdir(ROOT)  # a relative --results resolves from the repository root
    command = table.command_line(task, results_arg or table.RESULTS)
    table.write_outputs(task, results / task, command, tmp_path, with_plot=False)
    for name in ("README.md", "summary.json"):
        assert (tmp_path / name).read_bytes() == (results / task / name).read_bytes(), name


def test_a_changed_figure_is_caught(tmp_path):
    """The comparison above can fail: FedIT's seed-0 final loss 1e-4 higher changes both files."""
    task_dir = tmp_path / "cn_math"
    shutil.copytree(RESULTS / "reference" / "cn_math", task_dir)
    summary_path = task_dir / "fedit" / "fedit" / "seed0" / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["final_eval"]["eval_loss"] += 1e-4
    summary_path.write_text(json.dumps(summary), encoding="utf-8")
    table = import_benchmark("reference_table")
    command = table.command_line("cn_math", table.RESULTS)
    table.write_outputs("cn_math", task_dir, command, with_plot=False)
    for name in ("README.md", "summary.json"):
        committed = (RESULTS / "reference" / "cn_math" / name).read_bytes()
        assert (task_dir / name).read_bytes() != committed, name


def _tracked_copy(folder: Path, dest: Path) -> Path:
    """The git-tracked files under ``folder``, copied to ``dest``: what a clone holds (the
    resumable target re-run writes its unfinished runs beside them, untracked)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", str(folder.relative_to(ROOT))],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of committed result files")
    for name in filter(None, listed.split("\0")):
        copy = dest / Path(name).relative_to(folder.relative_to(ROOT))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy)
    return dest


@pytest.fixture(scope="module")
def committed_target(tmp_path_factory) -> Path:
    return _tracked_copy(RESULTS / "target", tmp_path_factory.mktemp("results") / "target")


@pytest.mark.parametrize("task", ["cn_math", "math_code"])
def test_target_pages_are_reproduced(task, committed_target, tmp_path, monkeypatch):
    """The target re-run's pages are what its committed runs give (the runs still going on
    the developer's machine are not in the comparison)."""
    table = import_benchmark("reference_table")
    monkeypatch.chdir(ROOT)
    command = table.command_line(task, table.METRICS["target_loss"].results, "target_loss")
    table.write_outputs(
        task, committed_target / task, command, tmp_path, with_plot=False, metric="target_loss"
    )
    for name in ("README.md", "summary.json"):
        assert (tmp_path / name).read_bytes() == (RESULTS / "target" / task / name).read_bytes()


def test_gate_and_defaults_pages_are_reproduced(committed_target):
    gate = import_benchmark("gate_table")
    tables = [gate.task_table(task, committed_target) for task in gate.TASKS]
    assert gate.markdown(tables) == (RESULTS / "target" / "gate.md").read_text(encoding="utf-8")
    committed = json.loads((RESULTS / "target" / "gate.json").read_text(encoding="utf-8"))
    assert json.loads(json.dumps(tables)) == committed
    defaults = import_benchmark("defaults_table")
    data = defaults.table(committed_target)
    page = (RESULTS / "target" / "defaults.md").read_text(encoding="utf-8")
    assert defaults.markdown(data) == page
    committed = json.loads((RESULTS / "target" / "defaults.json").read_text(encoding="utf-8"))
    assert json.loads(json.dumps(data)) == committed


@pytest.mark.integration  # the real dry runs (meta device) of the default and 7B model configs
def test_claims_page_is_reproduced(tmp_path, monkeypatch):
    claims = import_benchmark("claims")
    monkeypatch.chdir(ROOT)
    rows, notes, scale = claims.build_rows(claims.Sources(RESULTS), claims.dry_run_plan)
    text = claims.markdown(rows, notes, scale, ".venv/bin/python benchmarks/claims.py")
    assert text.encode("utf-8") == (RESULTS / "claims.md").read_bytes()


@pytest.mark.integration  # as above
def test_target_claims_page_is_reproduced(tmp_path, monkeypatch):
    """claims.md of the target re-run, from a copy of the committed result folders it reads
    (the runs still going on the developer's machine are not in the comparison)."""
    claims = import_benchmark("claims")
    root = tmp_path / "repo"
    results = root / "benchmarks" / "results"
    for folder in ("target", "reference", "data_limited", "pool_eval"):
        _tracked_copy(RESULTS / folder, results / folder)
    monkeypatch.setattr(claims, "ROOT", root)
    monkeypatch.setattr(claims, "RESULTS", results)
    monkeypatch.chdir(ROOT)  # the dry runs are commands of this checkout
    sources = claims.Sources(results, claims.TARGET_LOSS)
    rows, notes, scale = claims.build_rows(sources, claims.dry_run_plan)
    command = ".venv/bin/python benchmarks/claims.py --metric target_loss"
    text = claims.markdown(rows, notes, scale, command, claims.TARGET_LOSS)
    assert text.encode("utf-8") == (RESULTS / "target" / "claims.md").read_bytes()
