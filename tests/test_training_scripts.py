"""training_scripts/run_smartfed_*.sh: the paper's launchers. Each prints (DRY=1) one
`smartfed run` command that SmartFed's own parser and config resolution accept, with the
paper's protocol by default and the demo preset with SIZE=cpu."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from smartfed.cli.main import build_parser
from smartfed.cli.run_command import check_inputs, config_from_args
from smartfed.engine.config import RunConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "training_scripts"
# script -> (paper task, CPU task, pool)
LAUNCHERS = {
    "run_smartfed_cn_math.sh": ("cn_math", "cn_math", "cn_chat,en_math"),
    "run_smartfed_cn_code.sh": ("cn_code", "cn_code_offline", "cn_chat,en_code"),
    "run_smartfed_math_code.sh": ("math_code", "math_code", "en_math,en_code"),
}


def launch(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("SIZE", "MODEL", "DEVICE",
                   "DTYPE", "OUTPUT_DIR", "DATA_DIR", "TASK", "POOL")}  # fmt: skip
    environment.update(DRY="1", SMARTFED="smartfed", **env)
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=environment, capture_output=True, text=True
    )


def resolved(script: str, *args: str, **env: str) -> RunConfig:
    done = launch(script, *args, **env)
    assert done.returncode == 0, done.stderr
    argv = shlex.split(done.stdout)
    assert argv[:2] == ["smartfed", "run"]
    return config_from_args(build_parser().parse_args(argv[1:]))


@pytest.mark.parametrize("script", LAUNCHERS)
def test_paper_size_is_the_papers_protocol(script):
    assert os.access(SCRIPTS / script, os.X_OK)
    task, _, pool = LAUNCHERS[script]
    config = resolved(script)
    protocol = (config.num_clients, config.sample_clients, config.num_rounds, config.local_steps,
                config.batch_size)  # fmt: skip
    assert protocol == (20, 2, 20, 10, 16)
    settings = config.settings
    assert (config.method, settings.learning_rate, settings.topk_experts) == ("smartfed", 5e-4, 32)
    assert (settings.router, settings.dense) == ("linear", False)  # the paper's, not our defaults
    assert settings.enable_eeqa is True and config.preset == "paper"
    assert (config.task, config.lora_pool) == (task, pool)
    assert (config.device, config.dtype) == ("cuda", "bfloat16")
    assert config.output_dir == f"runs/paper_smartfed_{task}"


@pytest.mark.parametrize("script", LAUNCHERS)
def test_cpu_size_is_the_demo_preset_on_the_cpu(script):
    _, task, pool = LAUNCHERS[script]
    config = resolved(script, SIZE="cpu")
    assert (config.preset, config.task, config.lora_pool) == ("demo", task, pool)
    assert (config.device, config.dtype, config.num_rounds) == ("cpu", "float32", 4)
    assert (config.settings.router, config.settings.dense) == ("diag_lowrank", True)  # defaults
    if task != "cn_code_offline":  # its Chinese Alpaca data is not bundled: it needs DATA_DIR
        check_inputs(config)  # the bundled data and the shipped pool modules are there


def test_variables_and_arguments_reach_the_command(tmp_path):
    config = resolved(
        "run_smartfed_cn_math.sh", "--num_rounds", "3", "--seed", "7",
        MODEL="some/model", DEVICE="cuda:1", DTYPE="float16", OUTPUT_DIR=str(tmp_path / "r"),
        DATA_DIR=str(tmp_path),
    )  # fmt: skip
    assert (config.model_name_or_path, config.device, config.dtype) == (
        "some/model", "cuda:1", "float16"
    )  # fmt: skip
    assert (config.num_rounds, config.seed) == (3, 7)
    assert (config.output_dir, config.data_dir) == (str(tmp_path / "r"), str(tmp_path))


def test_an_unknown_size_is_refused_in_one_line():
    done = launch("run_smartfed_math_code.sh", SIZE="huge")
    assert done.returncode == 2
    assert done.stderr.strip() == "SIZE must be paper or cpu, got 'huge'"
