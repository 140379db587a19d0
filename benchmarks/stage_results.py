"""Stage finished result runs for a commit, with each run's final trainable state when it is
small enough to keep (issue: commit results as they land, so a new evaluation of a small
method needs no re-run).

    .venv/bin/python benchmarks/stage_results.py benchmarks/results/target   # then git commit

Stages every file of a finished run folder (one with ``summary.json``), its ``final/`` folder
too (ignored by .gitignore, added with ``--force``) when that folder is at most ``--max_final``
bytes (default 1 MiB: SmartFed's routers, not a fresh LoRA's A and B), and the bench-level files
(``bench.json``, ``results.*``, tables). Runs still in progress (no ``summary.json``) are left
out, as are checkpoints and lock files (ignored).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

MAX_FINAL = 2**20


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def plan(root: Path, max_final: int = MAX_FINAL) -> tuple[list[Path], list[Path]]:
    """(run folders still in progress, finished runs' final/ folders to keep)."""
    run_dirs = {
        p.parent for p in root.rglob("config.json") if (p.parent / "metrics.jsonl").exists()
    }
    unfinished = sorted(d for d in run_dirs if not (d / "summary.json").is_file())
    finals = [
        run / "final"
        for run in sorted(set(run_dirs) - set(unfinished))
        if (run / "final").is_dir() and folder_bytes(run / "final") <= max_final
    ]
    return unfinished, finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a results folder, e.g. benchmarks/results/target")
    parser.add_argument(
        "--max_final", type=int, default=MAX_FINAL, metavar="BYTES",
        help="keep a run's final/ folder up to this size (default 1 MiB)",
    )  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="list, stage nothing")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: no such folder")
    unfinished, finals = plan(args.root, args.max_final)
    print(f"{len(unfinished)} runs in progress left out, {len(finals)} final/ folders kept")
    if args.dry_run:
        for final in finals:
            print(f"  final: {final}")
        return
    # Everything .gitignore allows, then the runs in progress taken out again.
    subprocess.run(["git", "add", "--", str(args.root)], check=True)
    if unfinished:
        subprocess.run(["git", "reset", "-q", "--", *map(str, unfinished)], check=True)
    if finals:
        subprocess.run(["git", "add", "--force", "--", *map(str, finals)], check=True)


if __name__ == "__main__":
    main()
