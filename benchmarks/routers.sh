#!/usr/bin/env bash
# Every method gets a grid of three learning rates (the same tuning budget); the first results
# chose the top of two-point grids, hence the third, higher point.
# Router designs on the demo preset: each design (dense, K = M) and FedIT, every one tuned on a
# validation split carved from the training data (`--sweep`, never the test split), then run on
# the test split with the chosen learning rate. Resumable: rerun the same command after an
# interruption; finished runs are skipped. Results land in benchmarks/results/routers/TASK/.
#   benchmarks/routers.sh [TASK] [SEEDS]        e.g. benchmarks/routers.sh cn_math 0
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-cn_math}
SEEDS=${2:-0}
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=benchmarks/results/routers/$TASK
SMARTFED=${SMARTFED:-.venv/bin/smartfed}
COMMON=(--preset demo --task "$TASK" --data_dir "$DATA_DIR" --seeds "$SEEDS" --no_report)

for design in ${DESIGNS:-diag_lowrank projection diagonal linear}; do
  "$SMARTFED" bench "${COMMON[@]}" --methods smartfed_dense --router "$design" \
    --sweep "learning_rate=${ROUTER_GRID:-1e-2,5e-2,2e-1}" --output_dir "$OUT/$design"
done
"$SMARTFED" bench "${COMMON[@]}" --methods fedit --sweep "learning_rate=${FEDIT_GRID:-5e-4,2e-3,1e-2}" \
  --output_dir "$OUT/fedit"
# Cheap knowledge-free points: a fresh LoRA of small rank (alpha = 2 x rank, as the pool's 64/32).
for rank in ${FEDIT_RANKS:-4}; do
  "$SMARTFED" bench "${COMMON[@]}" --methods fedit --lora_rank "$rank" --lora_alpha $((2 * rank)) \
    --sweep "learning_rate=${SMALL_LORA_GRID:-2e-3,1e-2,5e-2}" --output_dir "$OUT/fedit_r$rank"
done
