#!/usr/bin/env bash
# SmartFed on Chinese code generation: Chinese Chat + English Code modules, trained on DoIT,
# scored by MBPP pass@1 (DoIT's own harness is not implemented). DoIT is not shipped: the paper
# size needs a local copy (DATA_DIR); SIZE=cpu uses the stand-in task cn_code_offline (the coding
# requests among the Chinese Alpaca data, also not bundled: DATA_DIR must hold zh_instruct/, as
# ../shared/data does in this workspace). Variables: training_scripts/launch_common.sh.
#   DATA_DIR=/data training_scripts/run_smartfed_cn_code.sh                   # the paper's protocol
#   SIZE=cpu DATA_DIR=../shared/data training_scripts/run_smartfed_cn_code.sh # demo preset, CPU
set -euo pipefail
if [[ "${SIZE:-paper}" == cpu ]]; then
  TASK="${TASK:-cn_code_offline}"
else
  TASK="${TASK:-cn_code}"
fi
POOL="${POOL:-cn_chat,en_code}"
# shellcheck source=training_scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
smartfed_launch "$@"
