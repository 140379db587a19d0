"""benchmarks/readme_table.py: the README's results table is what the script makes from the
committed target pages, each figure in its place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.benchmark_scripts import import_benchmark

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "benchmarks" / "results" / "target"


@pytest.fixture(scope="module")
def readme_table():
    return import_benchmark("readme_table")


def _summaries(root: Path, entries: dict[str, dict[str, dict]]) -> Path:
    """summary.json per task with ``entries[task]``, as reference_table.py writes them."""
    for task, found in entries.items():
        (root / task).mkdir(parents=True)
        summary = {"task": task, "metric": "target_loss", "entries": found}
        (root / task / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return root


def _entry(target: list[float], in_distribution: float, per_round: int, setup: int = 0) -> dict:
    mean = sum(target) / len(target)
    std = (sum((v - mean) ** 2 for v in target) / (len(target) - 1)) ** 0.5 if target[1:] else None
    entry = {
        "final_loss": {"mean": mean, "std": std, "n": len(target)},
        "in_distribution_loss": {"mean": in_distribution, "std": None, "n": len(target)},
        "bytes_per_round": per_round,
    }
    if setup:
        entry["setup_bytes"] = setup
    return entry


def test_the_committed_readme_block_is_generated(readme_table):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table.committed_block(readme) == readme_table.table(readme_table.load(TARGET))


def test_a_changed_figure_changes_the_block(readme_table, tmp_path):
    """The check above can fail: FedIT's MGSM-zh mean 1e-4 higher is another table."""
    for task in readme_table.TASKS:
        (tmp_path / task).mkdir()
        shutil.copy(TARGET / task / "summary.json", tmp_path / task)
    path = tmp_path / "cn_math" / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["entries"]["fedit"]["final_loss"]["mean"] += 1e-4
    path.write_text(json.dumps(summary), encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_table.committed_block(readme) != readme_table.table(readme_table.load(tmp_path))


def test_cells(readme_table, tmp_path):
    mib = 2**20
    root = _summaries(tmp_path, {
        "cn_math": {
            "fedit": _entry([0.70, 0.72, 0.74], 0.47, 28 * mib),
            "smartfed": _entry([0.80], 0.60, mib),
            "fed_sb_r26": _entry([0.60, 0.61, 0.62], 0.50, mib // 2, setup=45 * mib),
            "smartfed_only_en_math": _entry([0.1], 0.1, mib),  # not a README row
        },
        "math_code": {"fedit": _entry([0.15, 0.16, 0.17], 0.18, 28 * mib)},
    })  # fmt: skip
    lines = readme_table.table(readme_table.load(root)).splitlines()
    assert lines[0] == (
        "| method | MGSM-zh target loss | GSM-Hard target loss | `cn_math` in-distribution loss "
        "| `math_code` in-distribution loss | MiB / round |"
    )
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert len(rows) == 3 and not any("only" in row for row in rows.values())
    fedit = rows["FedIT (fresh LoRA, rank 32)"]
    assert fedit == ("| FedIT (fresh LoRA, rank 32) | 0.7200 ± 0.0200 | **0.1600 ± 0.0100** | "
                     "**0.4700** | **0.1800** | 28.00 |")  # fmt: skip
    smartfed = rows["**SmartFed, defaults** (`diag_lowrank` router, dense)"]
    assert "| 0.8000 (1 seed) | – | 0.6000 | – | 1.00 |" in smartfed
    fed_sb = rows["Fed-SB r 26 (frozen A, B; R trained)"]
    assert "| **0.6100 ± 0.0100** | – |" in fed_sb and fed_sb.endswith("| 0.50 (+ 45.00 once) |")
    # Rows keep ROWS's order, whatever the summaries' order.
    order = list(readme_table.ROWS.values())
    assert sorted(rows, key=order.index) == list(rows)


def test_bad_input_is_one_line(readme_table, tmp_path):
    with pytest.raises(SystemExit, match=r"cn_math/summary.json: no such file \(run: "
                       r".*reference_table.py cn_math --metric target_loss\)"):  # fmt: skip
        readme_table.load(tmp_path)
    root = _summaries(tmp_path / "r", {"cn_math": {}, "math_code": {}})
    path = root / "cn_math" / "summary.json"
    path.write_text(json.dumps({"entries": {}}), encoding="utf-8")  # an in-distribution page
    with pytest.raises(SystemExit, match="field metric is None, expected 'target_loss'"):
        readme_table.load(root)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(SystemExit, match="not valid JSON"):
        readme_table.load(root)


def test_replace_block(readme_table):
    begin, end = readme_table.BEGIN, readme_table.END
    text = f"head\n{begin}\nold\n{end}\ntail\n"
    new = readme_table.replace_block(text, "| a |")
    assert new == f"head\n{begin}\n| a |\n{end}\ntail\n"
    assert readme_table.committed_block(new) == "| a |"
    with pytest.raises(SystemExit, match="expected one line"):
        readme_table.replace_block("no markers", "| a |")


def test_one_seed_cannot_be_the_bold_lowest(readme_table, tmp_path):
    """An entry still short of its seeds shows its count and leaves the bold to a full one."""
    entries = {
        "cn_math": {
            "fedit": _entry([0.70, 0.71, 0.72], 0.5, 100),
            "smartfed": _entry([0.60], 0.4, 10),
        },
        "math_code": {"fedit": _entry([0.20, 0.21, 0.22], 0.3, 100)},
    }
    block = readme_table.table(readme_table.load(_summaries(tmp_path, entries)))
    smartfed_row = next(line for line in block.splitlines() if "SmartFed, defaults" in line)
    fedit_row = next(line for line in block.splitlines() if line.startswith("| FedIT (fresh"))
    assert "| 0.6000 (1 seed) |" in smartfed_row
    assert "**0.7100 ± 0.0100**" in fedit_row
