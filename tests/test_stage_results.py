"""benchmarks/stage_results.py: finished runs are staged with their final/ folder when it is
small, runs in progress and large final/ folders are not (a real git repository in tmp)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, finished: bool, final_bytes: int) -> None:
    folder.mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl"):
        (folder / name).write_text("{}\n")
    if finished:
        (folder / "summary.json").write_text("{}\n")
    (folder / "final").mkdir()
    (folder / "final" / "weights.safetensors").write_bytes(b"\0" * final_bytes)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "state.safetensors").write_bytes(b"\0" * 10)


def test_stages_finished_runs_and_small_final_states(tmp_path):
    repo = tmp_path / "repo"
    results = repo / "benchmarks" / "results" / "target"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text(
        "benchmarks/results/**/checkpoints/\nbenchmarks/results/**/final/\n"
    )
    bench = results / "cn_math" / "smartfed"
    (bench).mkdir(parents=True)
    (bench / "bench.json").write_text("{}\n")
    _run(bench / "smartfed" / "seed0", finished=True, final_bytes=1000)
    _run(bench / "smartfed" / "seed1", finished=False, final_bytes=1000)
    _run(results / "cn_math" / "fedit" / "fedit" / "seed0", finished=True, final_bytes=2**20 + 1)
    script = ROOT / "benchmarks" / "stage_results.py"
    done = subprocess.run(
        [sys.executable, str(script), "benchmarks/results/target"], cwd=repo,
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 runs in progress left out, 1 final/ folders kept" in done.stdout
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    prefix = "benchmarks/results/target/cn_math/"
    assert sorted(staged) == sorted([
        f"{prefix}smartfed/bench.json",
        *(f"{prefix}smartfed/smartfed/seed0/{n}" for n in ("config.json", "metrics.jsonl",
                                                          "summary.json")),
        f"{prefix}smartfed/smartfed/seed0/final/weights.safetensors",
        *(f"{prefix}fedit/fedit/seed0/{n}" for n in ("config.json", "metrics.jsonl",
                                                    "summary.json")),
    ])  # fmt: skip
