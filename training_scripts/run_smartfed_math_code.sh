#!/usr/bin/env bash
# SmartFed on hard math-word problems: English Math + English Code modules, trained on PAL
# programs (GSM8K-derived; MathCodeInstruct is not shipped), scored by GSM-Hard program-execution
# accuracy. The paper's protocol by default; SIZE=cpu runs the demo preset in minutes on a CPU.
# Variables: training_scripts/launch_common.sh.
#   training_scripts/run_smartfed_math_code.sh                    # the paper's protocol (GPU)
#   SIZE=cpu training_scripts/run_smartfed_math_code.sh           # demo preset, CPU: minutes
set -euo pipefail
TASK="${TASK:-math_code}"
POOL="${POOL:-en_math,en_code}"
# shellcheck source=training_scripts/launch_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
smartfed_launch "$@"
