#!/usr/bin/env bash
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
    --sweep "learning_rate=1e-2,5e-2" --output_dir "$OUT/$design"
done
"$SMARTFED" bench "${COMMON[@]}" --methods fedit --sweep "learning_rate=5e-4,2e-3" \
  --output_dir "$OUT/fedit"
# Cheap knowledge-free points: a fresh LoRA of small rank (alpha = 2 x rank, as the pool's 64/32).
for rank in ${FEDIT_RANKS:-4}; do
  "$SMARTFED" bench "${COMMON[@]}" --methods fedit --lora_rank "$rank" --lora_alpha $((2 * rank)) \
    --sweep "learning_rate=2e-3,1e-2" --output_dir "$OUT/fedit_r$rank"
done
