#!/usr/bin/env bash
# The re-run on the tasks' target sets (MGSM-zh for cn_math, GSM-Hard for math_code, each in the
# task's training format), in the order the issue's acceptance needs them: the gate (seed 0 of
# five entries), every reference entry with seeds 0, 1, 2 (seed 0 and the tuning are the gate's and
# are reused: a bench may add seeds), the final models' accuracy and the tables; then the ablation
# of SmartFed's defaults (seed 0), the rest of the defaults' grid (router design x routing, seed
# 0), and its finalists on the dev slice with seeds 1 and 2 (defaults_table.py decides; a new
# default means new package defaults and a rerun of the smartfed entry). Every entry is tuned
# over its 3-point grid on the target's dev slice.
# Everything lands in benchmarks/results/target/TASK/ENTRY/. Resumable: rerun this same command
# after an interruption (finished runs are skipped, an interrupted one resumes). About 4-15 min a
# run on 2 CPU cores; the gate is 40 runs, the seeds 14 entries x 2 more runs x 2 tasks (plus
# tuning for the entries the gate did not have), the accuracy a few minutes per final model, the
# ablation 7 entries x 4 runs x 2 tasks, the defaults 5 entries x 4 runs x 2 tasks, the finalists
# 3 entries x 2 runs x 2 tasks.
#   benchmarks/target_all.sh [STAGE ...]   stages: gate seeds accuracy tables ablation defaults
#                                          finalists (default all, in this order)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/target}
ABLATION="smartfed_scale1 smartfed_router_x smartfed_k32 smartfed_k32_eeqa smartfed_residual_r1"
declare -A ONLY=([cn_math]="smartfed_only_cn_chat smartfed_only_en_math"
                 [math_code]="smartfed_only_en_math smartfed_only_en_code")
# With the ablation's smartfed_router_x, smartfed_k32, smartfed_k32_eeqa and the gate's smartfed:
# diagonal / diag_lowrank / lowrank r 1 x dense / K = 32 / K = 32 with EEQA.
DEFAULTS="smartfed_diagonal smartfed_diagonal_k32 smartfed_diagonal_k32_eeqa smartfed_router_x_k32
          smartfed_router_x_k32_eeqa"
# The paper's configuration one part at a time (its linear router dense / uniform K = 32):
# beyond the bytes rule, run after the defaults' grid to say which part makes it the best SmartFed.
PAPER_PARTS="smartfed_paper_dense smartfed_paper_k32"
# smartfed_residual_r1 (the ablation's best change on both tasks' seed 0) asks with 3 seeds whether
# the pool adds anything to one fresh direction (fedit_r1); the last (smartfed_pool_v2, the
# stronger pool) answers the reviewers' doubt in claims.py.
SEEDED="fedit smartfed fed_sb_r26 fedit_r1 smartfed_paper fedit_r2 ffa_lora ffa_lora_r2
        fedit_bf16 fed_sb_r31 pool_bridge mole merge smartfed_residual_r1 smartfed_pool_v2"

for stage in ${*:-gate seeds accuracy tables ablation defaults finalists}; do
  case $stage in
    gate) benchmarks/gate.sh ;;
    ablation)
      for task in math_code cn_math; do
        # The pool one module at a time first: it answers soonest whether a module hurts the target.
        OUT=$OUT SEEDS=0 benchmarks/reference.sh "$task" ${ONLY[$task]} $ABLATION
      done ;;
    defaults)
      for task in math_code cn_math; do
        OUT=$OUT SEEDS=0 benchmarks/reference.sh "$task" $DEFAULTS $PAPER_PARTS
      done ;;
    finalists)
      # The defaults and the two best other cells (seed 0, dev slice) again with seeds 1 and 2 at
      # their chosen rate, dev slice only; defaults_table.py then decides (benchmarks/results/
      # target/defaults.md).
      plan=$("$PY" benchmarks/defaults_table.py --results "$OUT" --finalists)
      while read -r task entry rate; do
        for seed in 1 2; do
          OUT=$OUT/finalists/seed$seed SEEDS=$seed TUNE_ONLY=1 GRID=$rate \
            benchmarks/reference.sh "$task" "$entry"
        done
      done <<< "$plan"
      "$PY" benchmarks/defaults_table.py --results "$OUT" ;;
    seeds)
      for entry in $SEEDED; do
        for task in math_code cn_math; do
          OUT=$OUT SEEDS=0,1,2 benchmarks/reference.sh "$task" "$entry"
        done
      done ;;
    accuracy)
      # The reference entries' final models: greedy accuracy of seed 0 on the target's test
      # slice and the in-distribution test (seeds 1 and 2 with SEEDS="1 2" where seed 0 is off
      # the floor), the style-shift loss of every seed (math_code).
      ENTRIES=$SEEDED SEEDS=0 benchmarks/final_evals.sh "$OUT" target_accuracy test_accuracy
      ENTRIES=$SEEDED benchmarks/final_evals.sh "$OUT" style_shift ;;
    tables)
      "$PY" benchmarks/gate_table.py --results "$OUT"
      for task in cn_math math_code; do
        "$PY" benchmarks/reference_table.py "$task" --results "$OUT" --metric target_loss
      done
      # The README's results table and claims.md, from those pages (the default folder's only:
      # claims.py reads the other result folders beside it).
      if [[ $OUT == benchmarks/results/target ]]; then
        "$PY" benchmarks/readme_table.py --write
        "$PY" benchmarks/claims.py --metric target_loss
      fi ;;
    *) echo "target_all.sh: unknown stage $stage (gate seeds accuracy tables ablation" \
         "defaults finalists)" >&2
       exit 2 ;;
  esac
done
