# shellcheck shell=bash
# Sourced by the run_smartfed_*.sh launchers, not run itself: one `smartfed run` command of the
# paper's protocol (SIZE=paper, the default) or of a run this 2-core CPU machine finishes in
# minutes (SIZE=cpu: the demo preset). The launcher sets TASK and POOL before sourcing this.
#
# Variables (default):
#   SIZE        paper | cpu (paper)
#   MODEL       base model: hub id, HF folder, .gguf file or alias (smollm2-135m-instruct, the
#               base of the shipped pool modules; another model needs its own pool modules,
#               see `smartfed pool build`)
#   DEVICE      auto | cpu | cuda | cuda:N (paper: cuda, cpu: cpu)
#   DTYPE       float32 | bfloat16 | float16 of the frozen base and experts (paper: bfloat16,
#               cpu: float32)
#   OUTPUT_DIR  run directory (runs/<SIZE>_smartfed_<TASK>)
#   DATA_DIR    folder with the datasets (unset: $SMARTFED_DATA_DIR, then the bundled subsets)
#   SMARTFED    the smartfed command (smartfed on PATH, else this checkout's .venv/bin/smartfed)
#   DRY=1       print the command instead of running it
# Arguments after the script's name are appended to the command (and so win over the above).

smartfed_launch() {
  local root size device dtype smartfed
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  size="${SIZE:-paper}"
  local -a args
  case "$size" in
    paper)
      # The paper's federated protocol and method (its README): 20 clients, 2 sampled per
      # round, 20 rounds of 10 local AdamW steps at lr 5e-4, batch 16, its linear router with
      # K = 32 experts per matrix, EEQA. The preset adds max_seq_len 512 and 250 evaluation
      # examples. (SmartFed's own defaults differ: see benchmarks/results/routers/.)
      args=(--preset paper --num_clients 20 --sample_clients 2 --num_rounds 20
            --local_steps 10 --batch_size 16 --router linear --learning_rate 5e-4
            --topk_experts 32 --enable_eeqa)
      device=cuda
      dtype=bfloat16
      ;;
    cpu)
      # The demo preset: 8 clients, 2 sampled, 4 rounds of 4 steps at batch 4, with SmartFed's
      # defaults (diag_lowrank router at 5e-2, every expert).
      args=(--preset demo)
      device=cpu
      dtype=float32
      ;;
    *)
      echo "SIZE must be paper or cpu, got '$size'" >&2
      return 2
      ;;
  esac
  args+=(--method smartfed --task "$TASK" --lora_pool "$POOL"
         --model_name_or_path "${MODEL:-smollm2-135m-instruct}"
         --device "${DEVICE:-$device}" --dtype "${DTYPE:-$dtype}"
         --output_dir "${OUTPUT_DIR:-runs/${size}_smartfed_${TASK}}")
  if [[ -n "${DATA_DIR:-}" ]]; then
    args+=(--data_dir "$DATA_DIR")
  fi
  smartfed="${SMARTFED:-}"
  if [[ -z "$smartfed" ]]; then
    if command -v smartfed >/dev/null 2>&1; then
      smartfed=smartfed
    else
      smartfed="$root/.venv/bin/smartfed"
    fi
  fi
  if [[ "${DRY:-0}" == 1 ]]; then
    printf '%q ' "$smartfed" run "${args[@]}" "$@"
    printf '\n'
    return 0
  fi
  exec "$smartfed" run "${args[@]}" "$@"
}
