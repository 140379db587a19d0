"""The committed pages of the reference results are what the scripts generate now: rerun
``benchmarks/reference_table.py`` (both tasks, and the data-limited folder) and
``benchmarks/claims.py`` into a temporary folder and compare byte for byte with the committed
README.md / summary.json / claims.md. A change to the shared results library
(``smartfed.bench``) that alters a figure, a verdict word or a rule's wording fails here."""

from __future__ import annotations

import json
import shutil
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


@pytest.mark.integration  # the real dry runs (meta device) of the default and 7B model configs
def test_claims_page_is_reproduced(tmp_path, monkeypatch):
    claims = import_benchmark("claims")
    monkeypatch.chdir(ROOT)
    rows, notes, scale = claims.build_rows(claims.Sources(RESULTS), claims.dry_run_plan)
    text = claims.markdown(rows, notes, scale, ".venv/bin/python benchmarks/claims.py")
    assert text.encode("utf-8") == (RESULTS / "claims.md").read_bytes()
