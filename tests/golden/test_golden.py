"""The architecture refactoring changed no result: the smoke run and the smoke bench match the
golden record taken before it (commit de638e3, `smartfed run --preset smoke` and `smartfed bench
--preset smoke`), within the tolerances in extract.TOLERANCES: losses to 2e-3, weights' sums and
norms to 1e-3 relative, bytes, quotas and round counts exactly. About 12 minutes on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .extract import compare, extract

HERE = Path(__file__).resolve().parent
# The settings and the bench entries of the time the record was taken (see the TOML file).
PINNED = ("--config", str(HERE / "paper_settings.toml"))
RECORDED_ENTRIES = ("fedit,ffa_lora,fedsa_lora,merge,lorahub,mole,smartfed,smartfed_uniform,"
                    "smartfed_dense,smartfed_scale1")  # fmt: skip


def _smartfed(*args: str) -> None:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env.pop("SMARTFED_PLUGINS", None)
    subprocess.run([sys.executable, "-m", "smartfed.cli.main", *args], check=True, env=env)


def _expected(name: str) -> dict:
    record = json.loads((HERE / name).read_text())
    record.pop("tolerances")
    return record


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_run_matches_the_golden_record(tmp_path):
    _smartfed("run", "--preset", "smoke", *PINNED, "--output_dir", str(tmp_path / "run"))
    problems = compare(_expected("smoke_run.json"), extract(tmp_path / "run"))
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_bench_matches_the_golden_record(tmp_path):
    _smartfed(
        "bench", "--preset", "smoke", *PINNED, "--methods", RECORDED_ENTRIES, "--no_report",
        "--output_dir", str(tmp_path / "b"),
    )  # fmt: skip
    problems = compare(_expected("smoke_bench.json"), extract(tmp_path / "b"))
    assert not problems, "\n".join(problems[:20])


def test_the_comparison_catches_a_changed_loss_and_byte_count():
    """compare() itself must be able to fail, or the golden tests prove nothing."""
    expected = _expected("smoke_run.json")
    changed = json.loads(json.dumps(expected))
    changed["run"]["per_round"][0]["eval_loss"] += 0.01
    changed["run"]["per_round"][1]["bytes_up"] += 1
    name = next(iter(changed["run"]["weights"]))
    changed["run"]["weights"][name]["norm"] *= 1.01
    problems = compare(expected, changed)
    assert len(problems) == 3, problems
    assert compare(expected, json.loads(json.dumps(expected))) == []
