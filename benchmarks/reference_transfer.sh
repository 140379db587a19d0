#!/usr/bin/env bash
# Style-shift test of the math_code reference runs: answer-token loss of each finished seed run's
# final model on GSM-Hard's own reference programs (128 items, math_code's PAL prompt: harder
# numbers, programs by another hand, the original question in the docstring), into
# <run>/transfer_loss.json, which reference_table.py reads. Not the headline: that is the target
# loss (GSM-Hard in math_code's own program style, scored every round). --max_seq_len 512 cuts
# no item; the result records how many were cut ("truncated").
# Resumable: runs that already have the file are skipped.
#   benchmarks/reference_transfer.sh [RESULTS_DIR]   (default benchmarks/results/reference)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-benchmarks/results/reference}
DATA_DIR=${DATA_DIR:-../shared/data}
SMARTFED=${SMARTFED:-.venv/bin/smartfed}
shopt -s nullglob
for run in "$RESULTS"/math_code/*/*/seed*/; do
  run=${run%/}
  [[ -f $run/summary.json && ! -f $run/transfer_loss.json ]] || continue
  # FedSA-LoRA keeps B on the clients: there is no global model to evaluate.
  grep -q '"method": "fedsa_lora"' "$run/config.json" && { echo "skip $run (no global model)"; continue; }
  # Weights are not committed: a run finished in an earlier session may have lost them.
  [[ -d $run/final ]] || { echo "skip $run (no final weights: rerun it to measure transfer)"; continue; }
  echo "== $run ($(date -u +%H:%M))"
  "$SMARTFED" eval --run "$run" --benchmark loss --data gsm_hard_pal --split test --limit 128 \
    --max_seq_len 512 --data_dir "$DATA_DIR" --output "$run/transfer_loss.json"
done
