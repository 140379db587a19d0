#!/usr/bin/env bash
# Base model vs each pool module: own-skill loss and metric, and every task's eval set.
# Usage: [PHASE=loss|gen|all] benchmarks/pool_eval.sh [MODEL...]
#   MODEL: base, cn_chat, en_math, en_code (default all); PHASE: losses only, generative only, both
# Results: benchmarks/results/pool_eval/<model>__<benchmark>[__<data>].json; table:
#   .venv/bin/python benchmarks/pool_eval_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/pool_eval
DATA_DIR=${DATA_DIR:-../shared/data}
SMARTFED=${SMARTFED:-.venv/bin/smartfed}
PHASE=${PHASE:-all}
mkdir -p "$OUT"

run() {  # run MODEL NAME ARGS...: skip results that already exist (the script resumes)
  local model=$1 name=$2; shift 2
  local target=()
  [[ $model != base ]] && target=(--pool_module "$model")
  local file="$OUT/${model}__${name}.json"
  [[ -f $file ]] && { echo "have $file"; return; }
  echo "== $model $name"
  "$SMARTFED" eval "${target[@]}" --data_dir "$DATA_DIR" --output "$file" "$@"
}

for model in "${@:-base cn_chat en_math en_code}"; do
  for m in $model; do
    # Own-skill held-out losses (each module's training distribution) and task eval losses.
    if [[ $PHASE != gen ]]; then
    run "$m" loss__zh_instruct --benchmark loss --data zh_instruct --limit 48 --max_seq_len 256
    run "$m" loss__gsm8k --benchmark loss --data gsm8k --limit 48 --max_seq_len 256
    run "$m" loss__code_instruct --benchmark loss --data code_instruct --limit 48 --max_seq_len 256
    run "$m" loss__math23k --benchmark loss --data math23k --limit 48 --max_seq_len 256
    run "$m" loss__gsm8k_pal --benchmark loss --data gsm8k_pal --limit 48 --max_seq_len 256
    fi
    [[ $PHASE == loss ]] && continue
    # Task metrics: cn_math -> mgsm_zh, math_code -> gsm_hard, cn_code(_offline) -> mbpp.
    run "$m" mgsm_zh --benchmark mgsm_zh --limit 50
    run "$m" gsm_hard --benchmark gsm_hard --limit 20
    run "$m" mbpp --benchmark mbpp --limit 20
    # Own-skill metrics of the math and code modules (and the base model for comparison).
    if [[ $m == base || $m == en_math ]]; then run "$m" gsm8k --benchmark gsm8k --limit 20; fi
    if [[ $m == base || $m == en_code ]]; then run "$m" humaneval --benchmark humaneval --limit 20; fi
  done
done
