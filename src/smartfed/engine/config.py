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
from smartfed.engine.privacy import ACCOUNTINGS as DP_ACCOUNTINGS
from smartfed.engine.privacy import DEFAULT_ACCOUNTING as DEFAULT_DP_ACCOUNTING
from smartfed.engine.privacy import DEFAULT_DELTA as DEFAULT_DP_DELTA
from smartfed.engine.privacy import check_available as check_dp_available
from smartfed.engine.settings import MethodSettings, Settings, setting
from smartfed.errors import ConfigError
from smartfed.robust import (
    AGGREGATORS,
    DEFAULT_KRUM_BYZANTINE,
    DEFAULT_TRIM_FRACTION,
    AggregationRule,
)

PARTITIONS = ("iid", "dirichlet", "natural")
ENGINES = ("inprocess", "simulation")
# Precision of the tensors exchanged with clients (the server averages and keeps float32).
WIRE_DTYPES = ("float32", "bfloat16", "float16")
EVAL_SPLITS = ("test", "validation")
TARGET_SPLITS = ("dev", "test")
DEFAULT_TARGET_SAMPLES = 64
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
# SecAgg+ defaults (--secure_aggregation): every sampled client a neighbour of every other, two
# thirds of the shares to rebuild a secret, Flower's own clipping and quantisation ranges.
DEFAULT_SECAGG_NUM_SHARES = 1.0
DEFAULT_SECAGG_RECONSTRUCTION_THRESHOLD = 0.67
DEFAULT_SECAGG_CLIPPING_RANGE = 8.0
DEFAULT_SECAGG_QUANTIZATION_RANGE = 2**22
# SecAgg+ sums masked integers modulo 2**32 (Flower's modulus).
SECAGG_MODULUS = 2**32


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
    # federated protocol (docs/design.md §1.5)
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
    # robust aggregation (smartfed.robust): of the payloads and of SmartFed's importance
    aggregation: str = setting(
        "fedavg",
        "how the server combines clients' payloads and importance vectors: fedavg (weighted "
        "mean), median, trimmed_mean (both coordinate-wise, unweighted) or krum",
        choices=tuple(AGGREGATORS),
    )
    trim_fraction: float | None = setting(
        None,
        f"share of clients cut from each end, per coordinate (--aggregation trimmed_mean; "
        f"default {DEFAULT_TRIM_FRACTION})",
        above=0,
        below=0.5,
    )
    krum_byzantine: int | None = setting(
        None,
        f"attackers f that Krum assumes; needs --sample_clients >= 2f + 3 (--aggregation krum; "
        f"default {DEFAULT_KRUM_BYZANTINE})",
        minimum=1,
    )
    clip_update_norm: float | None = setting(
        None,
        "scale each client's update (its payload minus the global state) down to this L2 norm "
        "before aggregation; its importance shares are clipped to the round's median deviation "
        "(default: no clipping)",
        above=0,
    )
    # secure aggregation (Flower's SecAgg+; federation/secure_aggregation.py)
    secure_aggregation: bool = setting(
        False,
        "aggregate the clients' payloads with Flower's SecAgg+ protocol: the server learns only "
        "their weighted sum, quantised (metrics stay in the clear)",
    )
    secagg_num_shares: float | None = setting(
        None,
        "SecAgg+: share of the sampled clients each client splits its secrets among "
        f"(--secure_aggregation; default {DEFAULT_SECAGG_NUM_SHARES})",
        above=0,
        maximum=1,
    )
    secagg_reconstruction_threshold: float | None = setting(
        None,
        "SecAgg+: share of a client's shares needed to rebuild its secrets; higher is more "
        f"private, lower tolerates more dropouts (--secure_aggregation; default "
        f"{DEFAULT_SECAGG_RECONSTRUCTION_THRESHOLD})",
        above=0,
        maximum=1,
    )
    secagg_clipping_range: float | None = setting(
        None,
        "SecAgg+: every exchanged value must lie in [-R, R]; a client with a value outside "
        f"fails the round (--secure_aggregation; default {DEFAULT_SECAGG_CLIPPING_RANGE:g})",
        above=0,
    )
    secagg_quantization_range: int | None = setting(
        None,
        "SecAgg+: integer levels over [-R, R] (a step of 2R/levels); levels x sampled clients "
        "must stay below 2**32 (--secure_aggregation; default "
        f"{DEFAULT_SECAGG_QUANTIZATION_RANGE})",
        minimum=1024,
    )
    # central differential privacy of the communicated arrays (engine/privacy.py)
    dp_noise_multiplier: float | None = setting(
        None,
        "central DP: noise multiplier sigma; the server clips each client's update to "
        "--dp_clip_norm C, averages over --sample_clients n and adds Gaussian noise of std "
        "sigma*C/n (default: no DP)",
        above=0,
    )
    dp_clip_norm: float | None = setting(
        None, "central DP: L2 norm C each client's update is clipped to (needs it)", above=0
    )
    dp_delta: float | None = setting(
        None, f"central DP: delta at which epsilon is reported (default {DEFAULT_DP_DELTA:g})",
        above=0, below=1,
    )  # fmt: skip
    dp_accounting: str | None = setting(
        None,
        "central DP: how epsilon counts client sampling: without_replacement (what the server "
        "does; replace-one), poisson (add/remove one, the usual approximation) or none (no "
        f"amplification) (default {DEFAULT_DP_ACCOUNTING})",
        choices=DP_ACCOUNTINGS,
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
    target_samples: int | None = setting(
        None,
        "items of the task's target set (its other benchmark, in the training format) scored "
        f"every round (0: off; default {DEFAULT_TARGET_SAMPLES} where the task has a target set "
        "or --target_data is given, else off)",
        minimum=0,
    )
    target_split: str = setting(
        "test",
        "which split of the target set the per-round target loss reads",
        choices=TARGET_SPLITS,
    )
    target_every: int = setting(
        1,
        "score the target set every N rounds (round 0 and the last always); tuning runs score "
        "it at round 0 and the last only, as their choice reads the final loss",
        minimum=1,
    )
    target_max_seq_len: int = setting(
        512,
        "tokens per target item (prompt + answer); above --max_seq_len so that no answer is cut "
        "(each result records how many were: target_truncated)",
        minimum=1,
    )
    target_data: str | None = setting(
        None,
        "your own target set: a JSONL pattern PATH/{split}.jsonl (prompt/response fields; files "
        "dev.jsonl and test.jsonl) replacing the task's",
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
    overwrite: bool = setting(
        False,
        "start a new run in an output_dir that is not empty: first deletes the previous run's "
        "files there (config.json, partitions.json, metrics.jsonl, checkpoints/, final/, "
        "final_metric.json, usage.json, summary.json, dp_key.json, tensorboard/, wandb/); "
        "other files are kept. Without it such a folder is refused",
    )
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
        self._check_aggregation()
        self._check_secure_aggregation()
        self._check_privacy()
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
        self._check_target(task.target_dataset)

    def _check_target(self, task_target: str) -> None:
        """The target set is on by default where there is one; asked for where there is none,
        it is an error rather than an ignored flag."""
        has_target = bool(task_target or self.target_data)
        if self.target_samples is None:
            self.target_samples = DEFAULT_TARGET_SAMPLES if has_target else 0
        elif self.target_samples and not has_target:
            raise ConfigError(
                f"--target_samples {self.target_samples}: task {self.task} has no target set; "
                "give --target_data PATH/{split}.jsonl or --target_samples 0"
            )
        if self.target_data is not None and "{split}" not in self.target_data:
            raise ConfigError(
                f"--target_data {self.target_data!r}: expected a pattern with {{split}}, e.g. "
                "data/target/{split}.jsonl (files dev.jsonl and test.jsonl)"
            )

    def _check_aggregation(self) -> None:
        """Knobs only where their aggregator reads them; enough sampled clients to act on."""
        knobs = {"trim_fraction": ("trimmed_mean", DEFAULT_TRIM_FRACTION),
                 "krum_byzantine": ("krum", DEFAULT_KRUM_BYZANTINE)}  # fmt: skip
        for name, (aggregation, default) in knobs.items():
            if self.aggregation != aggregation and getattr(self, name) is not None:
                raise ConfigError(f"--{name} applies to --aggregation {aggregation} only")
            if self.aggregation == aggregation and getattr(self, name) is None:
                setattr(self, name, default)
        rule = self.aggregation_rule
        if self.sample_clients < rule.min_clients:
            raise ConfigError(
                f"--aggregation {rule.name} needs at least {rule.min_clients} sampled clients "
                f"({rule.requirement}), got --sample_clients {self.sample_clients}"
            )

    def _check_secure_aggregation(self) -> None:
        """SecAgg+ knobs only with --secure_aggregation; refuse what cannot compose with it."""
        defaults = {
            "secagg_num_shares": DEFAULT_SECAGG_NUM_SHARES,
            "secagg_reconstruction_threshold": DEFAULT_SECAGG_RECONSTRUCTION_THRESHOLD,
            "secagg_clipping_range": DEFAULT_SECAGG_CLIPPING_RANGE,
            "secagg_quantization_range": DEFAULT_SECAGG_QUANTIZATION_RANGE,
        }
        if not self.secure_aggregation:
            for name in defaults:
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name} applies to --secure_aggregation only")
            return
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.sample_clients < 2:
            raise ConfigError(
                "--secure_aggregation needs at least 2 sampled clients (SecAgg+ hides each "
                f"update in a sum), got --sample_clients {self.sample_clients}"
            )
        if self.wire_dtype != "float32":
            raise ConfigError(
                "--secure_aggregation sends quantised integers, not floats: --wire_dtype must "
                f"be float32, got {self.wire_dtype}"
            )
        if self.aggregation != "fedavg" or self.clip_update_norm is not None:
            flag = "--clip_update_norm" if self.aggregation == "fedavg" else "--aggregation"
            raise ConfigError(
                f"--secure_aggregation reveals only the weighted sum of the updates, so {flag} "
                "(which needs each client's update) cannot be used with it"
            )
        levels = self.secagg_quantization_range * self.sample_clients
        if levels >= SECAGG_MODULUS:
            raise ConfigError(
                f"--secagg_quantization_range ({self.secagg_quantization_range}) x "
                f"--sample_clients ({self.sample_clients}) must stay below 2**32, or the "
                "masked sum overflows"
            )

    def _check_privacy(self) -> None:
        """DP knobs only with --dp_noise_multiplier; refuse what cannot compose with it."""
        knobs = ("dp_clip_norm", "dp_delta", "dp_accounting")
        if self.dp_noise_multiplier is None:
            for name in knobs:
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name} applies to --dp_noise_multiplier only")
            return
        if self.dp_clip_norm is None:
            raise ConfigError("--dp_noise_multiplier needs --dp_clip_norm (the L2 bound C > 0)")
        if self.aggregation != "fedavg" or self.clip_update_norm is not None:
            flag = (
                "--clip_update_norm"
                if self.aggregation == "fedavg"
                else f"--aggregation {self.aggregation}"
            )
            raise ConfigError(
                f"--dp_noise_multiplier averages updates clipped to --dp_clip_norm; {flag} "
                "does not compose with it (its noise is calibrated to that mean)"
            )
        refusal = self.settings.dp_refusal()
        if refusal:
            raise ConfigError(refusal)
        if self.secure_aggregation:
            raise ConfigError(
                "--dp_noise_multiplier clips each client's update on the server, which "
                "--secure_aggregation hides from it: use one or the other"
            )
        if self.dp_delta is None:
            self.dp_delta = DEFAULT_DP_DELTA
        if self.dp_accounting is None:
            self.dp_accounting = DEFAULT_DP_ACCOUNTING
        check_dp_available()

    @property
    def aggregation_rule(self) -> AggregationRule:
        """The robust-aggregation settings as one value (the strategy and EEQA's importance)."""
        return AggregationRule(
            name=self.aggregation,
            trim_fraction=self.trim_fraction or DEFAULT_TRIM_FRACTION,
            krum_byzantine=self.krum_byzantine or DEFAULT_KRUM_BYZANTINE,
            clip_update_norm=self.clip_update_norm,
        )

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
