"""Everything a process needs to train or evaluate: base model, pool, method, task data.

Built once per process and cached: the in-process engine shares one runtime between the server
and all clients (they run one after the other), and each SuperNode process builds its own from
local paths. No Flower import here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from smartfed.assembly.config import config_from_dict
from smartfed.data import BatchStream, encode_example, load_examples, partition_examples
from smartfed.data.formatting import collate, encode_examples
from smartfed.data.targets import target_dev_sources, user_target_examples
from smartfed.data.tasks import get_task
from smartfed.engine.config import RunConfig
from smartfed.engine.method import FederatedMethod
from smartfed.engine.rundir import RunDirectory
from smartfed.engine.training import client_seed, seed_everything
from smartfed.errors import ConfigError, DamagedFileError, SmartFedError
from smartfed.methods import build_method
from smartfed.models import (
    LoadedModel,
    check_load_in_4bit,
    load_base_model,
    resolve_device,
    to_device,
)
from smartfed.models.device import warn_if_slow_half_on_cpu
from smartfed.pool import PoolRegistry, load_pool

log = logging.getLogger(__name__)

# Settings that cannot change what a runtime holds (model, pool, data, batches). Every other
# setting keys the cache, so a new setting is safe by default: at worst a needless rebuild.
_NOT_RUNTIME_KEYS = frozenset(
    {"num_rounds", "output_dir", "resume", "overwrite", "preset", "engine", "energy_country",
     "eval_every", "target_every", "metric_samples", "client_cpus", "client_gpus", "report_to",
     # server-side aggregation only (the strategy and the method's server logic read them)
     "aggregation", "trim_fraction", "krum_byzantine", "clip_update_norm"}
)  # fmt: skip
_CACHE: dict[str, Runtime] = {}


@dataclass
class Runtime:
    config: RunConfig

    def __post_init__(self) -> None:
        config = self.config
        self.task = get_task(config.task)
        # The pool first: a module whose files no longer match their pins is refused before
        # the base model loads.
        self.pool = load_pool(config.pool_items, PoolRegistry.default(config.pool_manifest))
        loaded, self.device = load_run_model(config)
        self.tokenizer = loaded.tokenizer
        self.model_source = loaded.source
        # Router init and a fresh LoRA's A come from the run seed: every process builds the
        # same initial model, on the CPU whatever the device (CUDA would draw other numbers).
        seed_everything(config.seed)
        self.method = build_method(config, loaded.model, self.pool)
        place_method(self.method, self.device, config)
        self.train_examples = load_examples(
            self.task.train_dataset, self.task.train_split, data_dir=config.data_dir
        )
        # --eval_split validation: a seeded slice of the training data, taken out before
        # partitioning so that no client trains on it.
        self.validation_examples: list = []
        if config.eval_split == "validation" and config.eval_samples:
            self.train_examples, self.validation_examples = hold_out(
                self.train_examples, config.eval_samples, config.seed, config.num_clients
            )
        self._initialize_method_on_server()
        self.initial_global_state = self.method.global_state()
        self.initial_local_state = self.method.local_state()
        field = config.partition_field or self.task.partition_field
        self.partition_field = field if config.partition != "iid" else None
        self.partitions = partition_examples(
            self.train_examples,
            config.num_clients,
            config.partition,
            seed=config.seed,
            alpha=config.dirichlet_alpha,
            field=self.partition_field,
        )
        if config.train_fraction < 1:
            self.partitions = _subsample(self.partitions, config.train_fraction, config.seed)
        self._encoded: dict[int, list] = {}

    def _initialize_method_on_server(self) -> None:
        """A method that initialises from data (Fed-SB) reads a seeded slice of the training
        data that no client holds, before round 1. Every process builds the same init from the
        same seed and examples, as it builds the same initial model."""
        count = self.method.server_init_examples
        if not count:
            return
        config = self.config
        # Positions into the training examples (after any validation hold-out).
        _, indices = hold_out(
            list(range(len(self.train_examples))), count, config.seed, config.num_clients,
            tag=0x5E7, setting="--init_examples",
        )  # fmt: skip
        held = [self.train_examples[i] for i in indices]
        taken = set(indices)
        self.train_examples = [ex for i, ex in enumerate(self.train_examples) if i not in taken]
        rows = [encode_example(self.tokenizer, ex, config.max_seq_len) for ex in held]
        rows = [row for row in rows if row is not None]
        pad = self.tokenizer.pad_token_id
        size = config.batch_size
        batches = [collate(rows[i : i + size], pad) for i in range(0, len(rows), size)]
        seed_everything(config.seed)
        self.method.initialize_on_server([to_device(b, self.device) for b in batches], indices)

    def encoded_partition(self, partition_id: int) -> list:
        if partition_id not in self._encoded:
            rows = [
                encode_example(self.tokenizer, self.train_examples[i], self.config.max_seq_len)
                for i in self.partitions[partition_id]
            ]
            self._encoded[partition_id] = [r for r in rows if r is not None]
        return self._encoded[partition_id]

    def client_batches(self, partition_id: int, server_round: int) -> BatchStream:
        seed = client_seed(self.config.seed, server_round, partition_id)
        return BatchStream(
            self.encoded_partition(partition_id),
            self.config.batch_size,
            seed,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    @cached_property
    def eval_batches(self) -> list[dict]:
        return self._eval_data[0]

    @cached_property
    def eval_encoding(self) -> dict[str, int]:
        """How the in-distribution eval items were encoded: examples, truncated, dropped..."""
        return self._eval_data[1]

    @cached_property
    def _eval_data(self) -> tuple[list[dict], dict[str, int]]:
        if self.config.eval_samples == 0:
            return [], {}
        if self.config.eval_split == "validation":
            examples = self.validation_examples  # the test split is never opened
        else:
            # The target's dev items may be the same questions (GSM-Hard is GSM8K's test with
            # larger numbers): tuning reads them, so the in-distribution test leaves them out.
            excluded = self._target_dev_sources()
            examples = load_examples(
                self.task.eval_dataset,
                self.task.eval_split,
                data_dir=self.config.data_dir,
                limit=self.config.eval_samples + len(excluded),
            )
            examples = [ex for ex in examples if ex.prompt not in excluded]
            examples = examples[: self.config.eval_samples]
        return self._batches(examples)

    @cached_property
    def target_examples(self) -> list:
        """The first ``target_samples`` items of the target set's ``target_split``."""
        config = self.config
        if not config.target_samples:
            return []
        if config.target_data is not None:
            return user_target_examples(
                config.target_data, config.target_split, limit=config.target_samples
            )
        return load_examples(
            self.task.target_dataset, config.target_split, limit=config.target_samples
        )

    @cached_property
    def _target_data(self) -> tuple[list[dict], dict[str, int]]:
        return self._batches(self.target_examples, self.config.target_max_seq_len)

    @cached_property
    def target_batches(self) -> list[dict]:
        return self._target_data[0]

    @cached_property
    def target_encoding(self) -> dict[str, int]:
        """How the target items were encoded: examples, truncated, dropped..."""
        return self._target_data[1]

    def _target_dev_sources(self) -> set[str]:
        if not self.task.target_dataset:
            return set()
        return target_dev_sources(self.task.target_dataset)

    def _batches(
        self, examples: list, max_seq_len: int | None = None
    ) -> tuple[list[dict], dict[str, int]]:
        if not examples:
            return [], {}
        length = max_seq_len or self.config.max_seq_len
        encoded = encode_examples(self.tokenizer, examples, length)
        # Batches of similar lengths: padding is compute too; the token-weighted loss does not
        # depend on the order.
        rows = sorted(encoded.encoded, key=lambda e: len(e["input_ids"]))
        size = self.config.eval_batch_size
        pad = self.tokenizer.pad_token_id
        batches = [collate(rows[i : i + size], pad) for i in range(0, len(rows), size)]
        return batches, encoded.summary()


def hold_out(
    examples: list,
    count: int,
    seed: int,
    num_clients: int,
    *,
    tag: int = 0x7A11D,
    setting: str = "--eval_samples",
) -> tuple[list, list]:
    """(training, held out): ``count`` examples drawn with ``seed`` (and ``tag``, one per use)
    are held out, in their original order; the rest stay for the clients. Same seed, same
    split. ``setting`` names the flag that asked for them, for the error."""
    if len(examples) - count < num_clients:
        raise ConfigError(
            f"{setting} {count} holds out that many of the task's {len(examples)} training "
            f"examples, leaving fewer than one per client ({num_clients}); lower {setting}"
        )
    rng = np.random.default_rng([seed, tag])
    held = {int(i) for i in rng.choice(len(examples), count, replace=False)}
    training = [ex for i, ex in enumerate(examples) if i not in held]
    return training, [examples[i] for i in sorted(held)]


def _subsample(partitions: list[list[int]], fraction: float, seed: int) -> list[list[int]]:
    """Data-efficiency runs: the same clients, each keeping a seeded share of its examples."""
    rng = np.random.default_rng([seed, 0xDA7A])
    kept = []
    for part in partitions:
        size = max(1, round(len(part) * fraction)) if part else 0
        kept.append(sorted(int(i) for i in rng.choice(part, size, replace=False)) if size else [])
    return kept


def check_hardware(config: RunConfig) -> None:
    """Refuse, in one line and before any model loads, a ``--device`` this machine lacks and
    ``--load_in_4bit`` off CUDA or without bitsandbytes."""
    device = resolve_device(config.device)
    if config.load_in_4bit:
        check_load_in_4bit(device)


def load_run_model(
    config: RunConfig, model_override: str | None = None, *, device: str | None = None
) -> tuple[LoadedModel, torch.device]:
    """The run's base model in its ``--dtype`` (with gradient checkpointing and 4-bit weights as
    set), and the device its method goes to (``device`` overrides ``config.device``).

    The model stays on the CPU, so that the method is built there (seeded initialisations do
    not depend on the device) and then moved by :func:`place_method`; a 4-bit model is loaded
    straight onto its GPU, where bitsandbytes quantizes it."""
    target = resolve_device(device or config.device)
    warn_if_slow_half_on_cpu(target, config.dtype)  # once per process, measured
    loaded = load_base_model(
        model_override or config.model_name_or_path,
        dtype=config.dtype,
        device=target if config.load_in_4bit else None,
        load_in_4bit=config.load_in_4bit,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    return loaded, target


def place_method(method: FederatedMethod, device: torch.device, config: RunConfig) -> None:
    """Move a method built on the CPU to ``device`` (a 4-bit model is already there)."""
    if not config.load_in_4bit:
        method.model.to(device)


def get_runtime(config: RunConfig) -> Runtime:
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_RUNTIME_KEYS}
    key = json.dumps(settings, sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()  # one runtime per process: models are large
        _CACHE[key] = Runtime(config)
    return _CACHE[key]


@dataclass
class FinishedRun:
    """A finished run's final model on its base model and pool, ready for inference."""

    method: FederatedMethod
    tokenizer: Any
    description: dict[str, Any]

    @property
    def model(self) -> Any:
        return self.method.model


def load_finished_run(
    run_dir: str,
    *,
    model_override: str | None = None,
    pool_manifest: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> FinishedRun:
    """Rebuild a run's method on its base model and pool and load its ``final/`` folder.

    ``device``: where it runs (default: auto, not the run's device: the hardware may differ);
    ``dtype``: the base model's precision (default: the run's ``--dtype``)."""
    run = RunDirectory(run_dir)
    saved = run.read_config(flag="--run")
    saved.pop("smartfed_version", None)
    if dtype is not None:
        saved["dtype"] = dtype
    config = config_from_dict(saved, source=str(run.config_path))
    # The pool before the base model: changed (unpinned) modules are refused first.
    pool = load_pool(config.pool_items, PoolRegistry.default(pool_manifest or config.pool_manifest))
    loaded, target = load_run_model(config, model_override, device=device or "auto")
    seed_everything(config.seed)  # FFA-LoRA's frozen A is rebuilt from the run seed
    method = build_method(config, loaded.model, pool)
    place_method(method, target, config)
    if not method.has_global_model:
        raise ConfigError(
            f"--run {run_dir}: method {config.method} keeps part of its model on the clients "
            "and has no global model to evaluate (its per-round eval loss is in metrics.jsonl)"
        )
    if not run.final.is_dir():
        raise ConfigError(f"--run {run_dir}: no final/ folder yet (the run has not finished)")
    try:
        method.load_final(run.final)
    except SmartFedError:
        raise
    except Exception as exc:  # a missing or damaged file of final/: whatever its reader raises
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DamagedFileError(
            f"--run {run_dir}: {run.final} is damaged or incomplete ({type(exc).__name__}: "
            f"{detail}); `smartfed run --resume {run_dir}` writes it again from the last "
            "checkpoint"
        ) from None
    method.model.eval()
    description = {
        "kind": "run",
        "run_dir": str(run_dir),
        "method": config.method,
        "task": config.task,
        "pool": config.pool_items,
        "base_model": loaded.source.display_name,
        "base_model_fingerprint": loaded.source.fingerprint,
        "device": str(target),
        "dtype": config.dtype,
        **method.describe_final(),
    }
    return FinishedRun(method=method, tokenizer=loaded.tokenizer, description=description)
