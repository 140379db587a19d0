#!/usr/bin/env bash
# Evaluations of each finished seed run's final model, beside the losses the run recorded itself,
# each into a file in the run folder that reference_table.py reads. Resumable: a run that already
# has a measure's file is skipped for that measure.
#   benchmarks/final_evals.sh RESULTS_DIR [MEASURE ...]     e.g. benchmarks/results/target
# Measures (default: all three, in this order):
#   target_accuracy  greedy accuracy on the target's test slice (MGSM-zh: the generated
#                    equation's value; GSM-Hard: the generated program run in the sandbox)
#                    -> accuracy_target.json
#   test_accuracy    the same scoring on the task's in-distribution test (Math23K; GSM8K as
#                    PAL programs) -> accuracy_test.json
#   style_shift      math_code only: answer-token loss on GSM-Hard's own reference programs
#                    (another author's style, the original question in the docstring;
#                    --max_seq_len 512 cuts no item, the result counts any cut) -> transfer_loss.json
# SEEDS="0" limits the seeds (default: every seed), ENTRIES="fedit smartfed" the entry folders
# (default: every folder); LIMIT items per measure (default 128).
# Final weights above 1 MiB are not committed (stage_results.py): a run without its final/ folder
# is run again from its config.json and partitions.json (seeded, the same model) into RERUN_DIR
# (default $TMPDIR/smartfed-reruns, kept for the next measure) and its weights are scored only if
# the rerun reproduced the committed run's bytes and final losses (benchmarks/same_run.py); the
# result then names the committed run and how closely the rerun matched. NO_RERUN=1 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:?usage: benchmarks/final_evals.sh RESULTS_DIR [MEASURE ...]}
shift
MEASURES=${*:-target_accuracy test_accuracy style_shift}
DATA_DIR=${DATA_DIR:-../shared/data}
SMARTFED=${SMARTFED:-.venv/bin/smartfed}
PY=${PY:-.venv/bin/python}
RERUN_DIR=${RERUN_DIR:-${TMPDIR:-/tmp}/smartfed-reruns}
LIMIT=${LIMIT:-128}
SEEDS=${SEEDS:-}
ENTRIES=$(echo ${ENTRIES:-})  # one line, single spaces
declare -A TARGET_BENCH=([cn_math]=mgsm_zh_math23k [math_code]=gsm_hard_gsm8k_pal)
declare -A TEST_BENCH=([cn_math]=math23k [math_code]=gsm8k_pal)

for measure in $MEASURES; do
  case $measure in
    target_accuracy | test_accuracy | style_shift) ;;
    *) echo "final_evals.sh: unknown measure $measure (target_accuracy test_accuracy" \
         "style_shift)" >&2
       exit 2 ;;
  esac
done

# The folder whose final/ weights stand for RUN: RUN itself, or its rerun (made here once).
weights_of() {
  local run=$1 rerun
  [[ -d $run/final ]] && { echo "$run"; return 0; }
  [[ -z ${NO_RERUN:-} && -f $run/config.json && -f $run/partitions.json ]] || return 1
  rerun=$RERUN_DIR/${run#"$RESULTS/"}
  if [[ ! -f $rerun/summary.json ]]; then
    mkdir -p "$rerun" || return 1
    [[ -f $rerun/config.json && -f $rerun/partitions.json ]] || cp "$run/config.json" "$run/partitions.json" "$rerun/" || return 1
    echo "== rerun $run into $rerun for its weights ($(date -u +%H:%M))" >&2
    "$SMARTFED" run --resume "$rerun" >&2 || return 1
  fi
  "$PY" benchmarks/same_run.py "$run" "$rerun" >&2 || return 1
  echo "$rerun"
}

shopt -s nullglob
for measure in $MEASURES; do
  for task in cn_math math_code; do
    case $measure in
      target_accuracy) file=accuracy_target.json; flags=(--benchmark "${TARGET_BENCH[$task]}") ;;
      test_accuracy) file=accuracy_test.json; flags=(--benchmark "${TEST_BENCH[$task]}") ;;
      style_shift)
        [[ $task == math_code ]] || continue
        file=transfer_loss.json
        flags=(--benchmark loss --data gsm_hard_pal --split test --max_seq_len 512) ;;
    esac
    # In ENTRIES' order (the most wanted first, should the session end on the way).
    for run in $(for entry in ${ENTRIES:-"*"}; do echo "$RESULTS/$task"/$entry/*/seed*/; done); do
      run=${run%/}
      seed=${run##*/seed}
      [[ -z $SEEDS || " $SEEDS " == *" $seed "* ]] || continue
      [[ -f $run/summary.json && ! -f $run/$file ]] || continue
      # FedSA-LoRA keeps B on the clients: there is no global model to evaluate.
      grep -q '"method": "fedsa_lora"' "$run/config.json" &&
        { echo "skip $run (no global model)"; continue; }
      weights=$(weights_of "$run") ||
        { echo "skip $run (no final weights, and no rerun that reproduces it)"; continue; }
      echo "== $measure $run ($(date -u +%H:%M))"
      "$SMARTFED" eval --run "$weights" "${flags[@]}" --limit "$LIMIT" --data_dir "$DATA_DIR" \
        --output "$run/$file"
      [[ $weights == "$run" ]] || "$PY" benchmarks/same_run.py "$run" "$weights" --annotate "$run/$file"
    done
  done
done
