#!/usr/bin/env bash
# Data-limited protocol (the paper's "SmartFed on 10 % of the data beats FedIT on all of it"):
# clients hold few examples and see them for several epochs. The demo preset's federation
# (8 clients, 2 per round, batch 4) over 12 rounds of 8 local steps: each client is sampled about
# 3 times and processes about 96 examples. On all of cn_math's data (about 290 per client) that
# is a third of an epoch; on 10 % (29 per client) it is over 3 epochs. Every arm is tuned on
# validation data over three learning rates, then run with seeds 0, 1, 2 on 128 test items. One
# bench folder per arm, so arms can run side by side (one command per arm):
#   fedit/            FedIT on all the data
#   smartfed_data10/  SmartFed on 10 % of every client's data (--train_fraction 0.1)
#   smartfed/         SmartFed on all the data (what the 10 % costs SmartFed itself)
# Caveat: tuning holds out 128 labelled training examples for validation in every arm, more than
# half of what the 10 % arm trains on (about 232): its learning rate is chosen with data it does
# not train on, as every arm's is.
# Resumable: rerun after an interruption. Results: benchmarks/results/data_limited/TASK/;
# tables: .venv/bin/python benchmarks/reference_table.py TASK --results benchmarks/results/data_limited
#   benchmarks/data_limited.sh [TASK [ARM...]]   (arms: fedit smartfed_data10 smartfed; default all)
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:-cn_math}
shift || true
ARMS=("$@")
[[ ${#ARMS[@]} -gt 0 ]] || ARMS=(fedit smartfed_data10 smartfed)
DATA_DIR=${DATA_DIR:-../shared/data}
SMARTFED=${SMARTFED:-.venv/bin/smartfed}
OUT=${OUT:-benchmarks/results/data_limited}/$TASK
COMMON=(--preset demo --task "$TASK" --data_dir "$DATA_DIR" --num_rounds 12 --local_steps 8
  --seeds "${SEEDS:-0,1,2}" --eval_samples 128 --no_report)
SMARTFED_GRID=learning_rate=1e-2,5e-2,2e-1
for arm in "${ARMS[@]}"; do
  case $arm in
    fedit) args=(--methods fedit --sweep learning_rate=5e-4,2e-3,1e-2) ;;
    smartfed_data10) args=(--methods smartfed --train_fraction 0.1 --sweep "$SMARTFED_GRID") ;;
    smartfed) args=(--methods smartfed --sweep "$SMARTFED_GRID") ;;
    *) echo "data_limited.sh: unknown arm '$arm' (known: fedit smartfed_data10 smartfed)" >&2
       exit 2 ;;
  esac
  echo "== $TASK/$arm ($(date -u +%H:%M))"
  "$SMARTFED" bench "${COMMON[@]}" "${args[@]}" --output_dir "$OUT/$arm"
done
