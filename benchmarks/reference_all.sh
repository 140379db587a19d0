#!/usr/bin/env bash
# The whole reference run of benchmarks/README.md, in the order that answers the paper's claims
# soonest: FedIT, SmartFed and merge on both tasks; the stronger pool and SmartFed on it; the
# data-limited protocol; then the other baselines. The transfer test follows every math_code
# step: it needs the runs' final weights, which are not committed and may not outlive a session.
# Every step resumes (finished runs are skipped, an interrupted one resumes), so rerun this same
# command after an interruption and it picks up where it stopped. Tables and claims are
# regenerated at the end; they can also be regenerated at any time from whatever has finished.
#   benchmarks/reference_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run: see "--threads 1" above

benchmarks/reference.sh cn_math fedit smartfed merge
benchmarks/reference.sh math_code fedit smartfed merge
benchmarks/reference_transfer.sh
make pool-v2
PHASE=loss benchmarks/pool_eval.sh en_math_v2 cn_chat_v2 en_code_v2
benchmarks/reference.sh cn_math smartfed_pool_v2 merge_pool_v2
benchmarks/reference.sh math_code smartfed_pool_v2 merge_pool_v2
benchmarks/reference_transfer.sh
benchmarks/data_limited.sh cn_math
benchmarks/reference.sh cn_math smartfed_paper mole lorahub ffa_lora fedsa_lora
benchmarks/reference.sh math_code smartfed_paper mole lorahub ffa_lora fedsa_lora
benchmarks/reference_transfer.sh

for task in cn_math math_code; do "$PY" benchmarks/reference_table.py "$task"; done
"$PY" benchmarks/reference_table.py cn_math --results benchmarks/results/data_limited
"$PY" benchmarks/pool_eval_table.py --write
"$PY" benchmarks/claims.py
