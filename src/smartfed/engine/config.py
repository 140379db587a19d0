"""The configuration of a federated run: the shared settings plus the chosen method's block.

Shared settings (task, data, federation protocol, evaluation, run bookkeeping) are fields of
:class:`RunConfig`; everything only one method reads lives in that method's settings class
(``smartfed.methods.<name>``), held in ``RunConfig.settings``. Resolving flags, presets and
TOML files into a RunConfig needs the method registry and so lives above the methods, in
:mod:`smartfed.assembly.config`. This module imports neither torch nor Flower.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from smartfed.data.tasks import get_task
from smartfed.engine.settings import MethodSettings, Settings, setting
from smartfed.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "natural")
ENGINES = ("inprocess", "simulation")
# Precision of the tensors exchanged with clients (the server averages and keeps float32).
WIRE_DTYPES = ("float32", "bfloat16", "float16")
EVAL_SPLITS = ("test", "validation")
# Precision of the frozen base model and pool experts; trainable parameters stay float32.
MODEL_DTYPES = ("float32", "bfloat16", "float16")
# Settings a resumed run (or bench) may change: where and how memory-thriftily it computes, not
# what. --dtype and --load_in_4bit change the numerics mid-run and are refused on resume.
RESUMABLE_HARDWARE = ("device", "gradient_checkpointing")
REPORT_TO = ("none", "tensorboard", "wandb")
# config.json layout: 1 = one flat dict of every method's settings (SmartFed <= 0.1),
# 2 = shared settings + "method_settings" (the chosen method's block).
CONFIG_FORMAT = 2
DEFAULT_DIRICHLET_ALPHA = 0.5


@dataclass
class RunConfig(Settings):
    # what to train
    method: str = setting("smartfed", "federated method (`smartfed methods` lists them)")
    model_name_or_path: str = setting(
        "smollm2-135m-instruct", "base model: hub id, HF folder, .gguf file or a known alias"
    )
    lora_pool: str | None = setting(
        None, "comma-separated pool modules: names, PEFT folders, hub ids (default: the task's)"
    )
    pool_manifest: str | None = setting(None, "extra pool manifest JSON")
    task: str = setting("cn_math", "task name (e.g. gsm8k, cn_math) or a JSONL pattern")
    data_dir: str | None = setting(
        None, "folder with the datasets (default: $SMARTFED_DATA_DIR, then bundled)"
    )
    # federated protocol (DESIGN §1.5)
    num_clients: int = setting(20, "clients in the federation", minimum=1)
    sample_clients: int = setting(2, "clients sampled per round", minimum=1)
    num_rounds: int = setting(20, "communication rounds", minimum=1)
    local_steps: int = setting(10, "local AdamW steps per client per round", minimum=1)
    batch_size: int = setting(16, "local batch size", minimum=1)
    max_seq_len: int = setting(256, "maximum tokens per example", minimum=1)
    min_replies: int = setting(1, "fewest usable client replies a round may aggregate", minimum=1)
    wire_dtype: str = setting(
        "float32",
        "precision of the tensors sent each way (the server averages and keeps float32; "
        "bfloat16 and float16 halve the bytes)",
        choices=WIRE_DTYPES,
    )
    # data split and evaluation
    partition: str = setting("iid", "how client data is split", choices=PARTITIONS)
    dirichlet_alpha: float | None = setting(
        None, f"Dirichlet concentration (dirichlet only; default {DEFAULT_DIRICHLET_ALPHA})",
        above=0,
    )  # fmt: skip
    partition_field: str | None = setting(
        None, "example field to split by (dirichlet / natural; default: the task's)"
    )
    train_fraction: float = setting(
        1.0, "keep this seeded share of every client's data (data efficiency)", above=0, maximum=1
    )
    eval_every: int = setting(1, "evaluate every N rounds (and after the last)", minimum=1)
    eval_samples: int = setting(
        64, "held-out examples for the eval loss (0: no evaluation)", minimum=0
    )
    eval_split: str = setting(
        "test",
        "where the per-round eval loss comes from: test (the task's held-out split) or "
        "validation (a seeded slice of eval_samples training examples, kept out of every "
        "client's partition; the test split is never read)",
        choices=EVAL_SPLITS,
    )
    eval_batch_size: int = setting(8, "evaluation batch size", minimum=1)
    metric_samples: int = setting(
        0, "task-benchmark items scored on the final model (0: none)", minimum=0
    )
    # hardware and precision
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps")
    dtype: str = setting(
        "float32",
        "precision of the frozen base model and pool experts (trainable parameters stay float32)",
        choices=MODEL_DTYPES,
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass (less memory, more compute)"
    )
    load_in_4bit: bool = setting(
        False, "load the frozen base model in 4 bits through bitsandbytes (CUDA only)"
    )
    # run
    seed: int = setting(0, "random seed (sampling, partitions, router init, batches)")
    engine: str = setting(
        "inprocess", "inprocess (one process) or simulation (Flower's Ray engine)", choices=ENGINES
    )
    client_cpus: float | None = setting(
        None, "CPU cores each simulated client reserves (--engine simulation; default 1)", above=0
    )
    client_gpus: float | None = setting(
        None,
        "GPUs each simulated client reserves, fractions share one GPU (--engine simulation; "
        "default 1 where clients would train on CUDA, else 0)",
        minimum=0,
    )
    report_to: str = setting(
        "none", "where per-round metrics also go: none, tensorboard or wandb", choices=REPORT_TO
    )
    output_dir: str = setting("runs/smartfed", "run directory")
    energy_country: str = setting("USA", "ISO code for CodeCarbon's offline carbon intensity")
    preset: str | None = setting(None, "the preset these settings started from")
    resume: bool = setting(False, "continue the run in output_dir from its last complete round")
    # the chosen method's own settings (not a flag itself: its fields are)
    settings: MethodSettings = field(default_factory=MethodSettings)

    def check(self) -> None:
        if self.sample_clients > self.num_clients:
            raise ConfigError(
                f"--sample_clients ({self.sample_clients}) must not exceed --num_clients "
                f"({self.num_clients})"
            )
        if self.min_replies > self.sample_clients:
            raise ConfigError(
                f"--min_replies ({self.min_replies}) must not exceed --sample_clients "
                f"({self.sample_clients})"
            )
        if self.partition == "iid":
            for name in ("dirichlet_alpha", "partition_field"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"--{name} does not apply to --partition iid (use dirichlet or natural)"
                    )
        elif self.partition == "natural" and self.dirichlet_alpha is not None:
            raise ConfigError("--dirichlet_alpha applies to --partition dirichlet only")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"--device {self.device!r}: expected auto, cpu, cuda, cuda:N (N a GPU index) or mps"
            )
        if self.engine != "simulation":
            for name in ("client_cpus", "client_gpus"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name} applies to --engine simulation only")
        if self.eval_split == "validation" and self.metric_samples:
            raise ConfigError(
                "--metric_samples scores the task's test benchmark; it does not apply with "
                "--eval_split validation (which never reads test data)"
            )
        if self.partition == "dirichlet" and self.dirichlet_alpha is None:
            self.dirichlet_alpha = DEFAULT_DIRICHLET_ALPHA
        task = get_task(self.task)  # unknown tasks fail here, listing the known ones
        if self.lora_pool is None:
            if not task.default_pool:
                raise ConfigError(f"task {self.task} has no default pool: give --lora_pool")
            self.lora_pool = task.default_pool
        if not self.pool_items:
            raise ConfigError("--lora_pool must name at least one pool module")

    @property
    def pool_items(self) -> list[str]:
        return [item.strip() for item in (self.lora_pool or "").split(",") if item.strip()]

    def shared_dict(self) -> dict[str, Any]:
        return super().to_dict()

    def to_dict(self) -> dict[str, Any]:
        """What config.json holds: shared settings, the method's block and the format."""
        return {
            **self.shared_dict(),
            "method_settings": self.settings.to_dict(),
            "config_format": CONFIG_FORMAT,
        }
