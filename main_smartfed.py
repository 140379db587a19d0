"""Entry point with the flags of the paper's README; same as ``smartfed run``.

    python main_smartfed.py --model_name_or_path smollm2-135m-instruct --lora_pool cn_chat,en_math \
        --task cn_math --num_clients 20 --sample_clients 2 --num_rounds 20 --local_steps 10 \
        --batch_size 16 --learning_rate 5e-4 --topk_experts 32 --enable_eeqa \
        --output_dir ./output/smartfed_cn_math
"""

import sys

from smartfed.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
