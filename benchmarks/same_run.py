"""Check that a rerun of a committed seed run reproduced it, before its weights are measured.

Final weights above 1 MiB (a fresh LoRA's A and B) are not committed, so ``final_evals.sh``
reruns such a run from its saved ``config.json`` and ``partitions.json`` (seeded: the same
model) and scores the rerun's weights. They stand for the committed run only if the rerun ends
where it did: the same bytes each way and the same final losses within ``--rel_tol``.

    .venv/bin/python benchmarks/same_run.py RUN RERUN [--annotate RESULT.json]

Exits 1 (with a line saying what differs) when the rerun did not reproduce the run.
``--annotate`` marks an evaluation result of the rerun's weights as the committed run's:
``model.run_dir`` names the committed run, ``model.rerun`` says where and how closely it matched.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from smartfed.utils.io import write_json_atomic

REL_TOL = 1e-3
EXACT = ("rounds", "bytes_up", "bytes_down")
# (section, key) of the summary's final losses.
LOSSES = (("final_eval", "eval_loss"), ("final_target", "target_loss"))


def differences(committed: dict, rerun: dict, rel_tol: float = REL_TOL) -> list[str]:
    """What the rerun's summary does not reproduce of the committed one ([] when it does)."""
    found = [
        f"{key} {committed.get(key)} != {rerun.get(key)}"
        for key in EXACT
        if committed.get(key) != rerun.get(key)
    ]
    for section, key in LOSSES:
        want = (committed.get(section) or {}).get(key)
        got = (rerun.get(section) or {}).get(key)
        if want is None and got is None:
            continue
        if want is None or got is None or not math.isclose(want, got, rel_tol=rel_tol):
            found.append(f"{section}.{key} {want} != {got} (rel_tol {rel_tol:g})")
    return found


def largest_relative_gap(committed: dict, rerun: dict) -> float:
    gaps = [
        abs(committed[s][k] - rerun[s][k]) / abs(committed[s][k])
        for s, k in LOSSES
        if (committed.get(s) or {}).get(k) and (rerun.get(s) or {}).get(k) is not None
    ]
    return max(gaps, default=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the committed seed run")
    parser.add_argument("rerun", type=Path, help="its rerun (a copy of its config, run again)")
    parser.add_argument("--rel_tol", type=float, default=REL_TOL)
    parser.add_argument("--annotate", type=Path, help="an evaluation result of the rerun")
    args = parser.parse_args(argv)
    summaries = []
    for folder in (args.run, args.rerun):
        path = folder / "summary.json"
        if not path.is_file():
            print(f"same_run.py: {path}: missing (the run has not finished)", file=sys.stderr)
            return 1
        summaries.append(json.loads(path.read_text()))
    committed, rerun = summaries
    found = differences(committed, rerun, args.rel_tol)
    if found:
        print(f"same_run.py: {args.rerun} does not reproduce {args.run}: {'; '.join(found)}",
              file=sys.stderr)  # fmt: skip
        return 1
    gap = largest_relative_gap(committed, rerun)
    print(f"{args.rerun} reproduces {args.run} (largest relative loss gap {gap:.1e})")
    if args.annotate:
        result = json.loads(args.annotate.read_text())
        result["model"]["run_dir"] = str(args.run)
        result["model"]["rerun"] = {"dir": str(args.rerun), "largest_relative_loss_gap": gap}
        write_json_atomic(args.annotate, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
