#!/usr/bin/env bash
# Style-shift test of the math_code reference runs: answer-token loss of each finished seed run's
# final model on GSM-Hard's own reference programs, into <run>/transfer_loss.json, which
# reference_table.py reads (final_evals.sh's style_shift measure; see there).
# Resumable: runs that already have the file are skipped.
#   benchmarks/reference_transfer.sh [RESULTS_DIR]   (default benchmarks/results/reference)
set -euo pipefail
exec "$(dirname "$0")/final_evals.sh" "${1:-benchmarks/results/reference}" style_shift
