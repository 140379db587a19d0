#!/usr/bin/env bash
# The gate before the full re-run (issue: measure where the paper does): seed 0 of the strongest
# knowledge-free baselines and SmartFed on both tasks' target sets, each entry tuned over its
# 3-point grid on the target's dev slice (`--select_on target`, the default for these tasks),
# then run once on the target's test slice. Resumable: rerun after an interruption.
# Results: benchmarks/results/target/TASK/ENTRY/ (the target re-run's folders: its seeds 1 and 2
# extend these benches, `OUT=benchmarks/results/target benchmarks/reference.sh TASK ENTRY`);
# table: .venv/bin/python benchmarks/gate_table.py (benchmarks/results/target/gate.md)
#
#   benchmarks/gate.sh [ENTRY ...]
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${*:-fedit smartfed fed_sb_r26 fedit_r1 smartfed_paper}
PY=${PY:-.venv/bin/python}
for entry in $ENTRIES; do
  for task in math_code cn_math; do
    # Once target_all.sh's seeds stage has extended a gate bench to more seeds, it owns the
    # folder (a bench may add seeds, not drop them): its seed 0 is this gate's run.
    bench=benchmarks/results/target/$task/$entry/bench.json
    if [[ -f $bench ]] && "$PY" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["seeds"] == [0])' "$bench"; then
      echo "== $task/$entry: extended to more seeds (target_all.sh seeds), skipped here"
      continue
    fi
    OUT=benchmarks/results/target SEEDS=0 benchmarks/reference.sh "$task" "$entry"
  done
done
