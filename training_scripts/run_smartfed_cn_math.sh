#!/usr/bin/env bash
# SmartFed on Chinese mathematical reasoning: Chinese Chat + English Math modules, trained on
# Math23K, scored on MGSM-zh (accuracy). The paper's protocol by default; SIZE=cpu runs the demo
# preset in minutes on a CPU. Variables: training_scripts/launch_common.sh.
#   training_scripts/run_smartfed_cn_math.sh                      # the paper's protocol (GPU)
#   SIZE=cpu training_scripts/run_smartfed_cn_math.sh             # demo preset, CPU: minutes
#   DRY=1 training_scripts/run_smartfed_cn_math.sh --num_rounds 5 # print the command
set -euo pipefail
TASK="${TASK:-cn_math}"
POOL="${POOL:-cn_chat,en_math}"
# shellcheck source=training_scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
smartfed_launch "$@"
