"""The resolved configuration of a federated run: flags, presets and TOML files in one dataclass.

Precedence: built-in defaults < preset < ``--config FILE.toml`` < explicit flags. The resolved
dict is saved as ``config.json`` in the run directory and is what a resumed run reloads. This
module imports neither torch nor Flower.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from smartfed.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "natural")
ENGINES = ("inprocess", "simulation")


@dataclass
class RunConfig:
    # what to train
    method: str = "smartfed"  # see smartfed.methods (``smartfed run --help`` lists them)
    model_name_or_path: str = "smollm2-135m-instruct"
    lora_pool: str = "cn_chat,en_math"
    pool_manifest: str | None = None
    task: str = "cn_math"
    data_dir: str | None = None
    # federated protocol (DESIGN §1.5)
    num_clients: int = 20
    sample_clients: int = 2
    num_rounds: int = 20
    local_steps: int = 10
    batch_size: int = 16
    learning_rate: float = 5e-4
    max_seq_len: int = 256
    min_replies: int = 1
    # MoRE / EEQA
    topk_experts: int = 32
    enable_eeqa: bool = True
    eeqa_warmup_rounds: int = 1
    k_min: int = 1
    ema_beta: float = 0.7
    output_scale: str = "k"
    importance_score: str = "cosine"
    router_init_std: float = 0.02
    dense: bool = False  # SmartFed ablation: K_ℓ = M_ℓ (every expert, EEQA off)
    # baselines: fresh LoRA shape (default: the first pool module's) and MoLE's module top-k
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | None = None
    mole_top_k: int = 2
    # LoRAHub's N module weights are O(1) scalars: at the routers' 5e-4 they would barely move
    lorahub_learning_rate: float = 5e-2
    # data split and evaluation
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    partition_field: str | None = None
    train_fraction: float = 1.0  # keep this seeded share of every client's partition
    eval_every: int = 1
    eval_samples: int = 64
    eval_batch_size: int = 8
    metric_samples: int = 0  # task-benchmark items generated and scored after the last round
    # run
    seed: int = 0
    engine: str = "inprocess"
    output_dir: str = "runs/smartfed"
    energy_country: str = "USA"
    preset: str | None = None
    resume: bool = False  # continue the run in output_dir from its last complete round

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name} must be an integer >= 1, got {value!r}")

        for name in (
            "num_clients", "sample_clients", "num_rounds", "local_steps", "batch_size",
            "max_seq_len", "topk_experts", "k_min", "eval_every", "eval_batch_size", "min_replies",
        ):  # fmt: skip
            positive(name)
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
        if self.k_min > self.topk_experts:
            raise ConfigError(f"--k_min ({self.k_min}) must not exceed --topk_experts")
        for name in ("learning_rate", "lorahub_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.ema_beta < 1:
            raise ConfigError(f"--ema_beta must be in [0, 1), got {self.ema_beta!r}")
        if self.eeqa_warmup_rounds < 0:
            raise ConfigError("--eeqa_warmup_rounds must be >= 0")
        if self.eval_samples < 0:
            raise ConfigError("--eval_samples must be >= 0 (0 disables evaluation)")
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}"
            )
        if self.partition == "dirichlet" and not self.dirichlet_alpha > 0:
            raise ConfigError(f"--dirichlet_alpha must be > 0, got {self.dirichlet_alpha!r}")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"--engine must be one of {', '.join(ENGINES)} (deployment runs through "
                f"`flwr run`, see the README), got {self.engine!r}"
            )
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"--train_fraction must be in (0, 1], got {self.train_fraction!r}")
        if self.metric_samples < 0:
            raise ConfigError("--metric_samples must be >= 0 (0: no final task metric)")
        if self.mole_top_k < 1:
            raise ConfigError(f"--mole_top_k must be >= 1, got {self.mole_top_k!r}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ConfigError(f"--lora_rank must be >= 1, got {self.lora_rank!r}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"--lora_alpha must be > 0, got {self.lora_alpha!r}")
        from smartfed.methods.registry import get_method

        get_method(self.method)  # unknown names fail here, listing the known ones
        if not self.lora_pool.strip():
            raise ConfigError("--lora_pool must name at least one pool module")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pool_items(self) -> list[str]:
        return [item.strip() for item in self.lora_pool.split(",") if item.strip()]


PRESETS: dict[str, dict[str, Any]] = {
    # A pipeline check on the real default model: about a minute on 2 CPU cores.
    "smoke": dict(
        task="gsm8k",
        lora_pool="smoke_math_a,smoke_math_b",
        num_clients=2,
        sample_clients=2,
        num_rounds=2,
        local_steps=2,
        batch_size=2,
        max_seq_len=128,
        topk_experts=4,
        eval_samples=8,
        eval_batch_size=8,
        output_dir="runs/smoke",
    ),
    # The seed's composition (Chinese math from a Chinese-chat and an English-math module),
    # sized for a few minutes on 2 CPU cores with the committed pool modules and bundled data,
    # and small enough that `smartfed bench --preset demo` can run every method.
    "demo": dict(
        task="cn_math",
        lora_pool="cn_chat,en_math",
        num_clients=8,
        sample_clients=2,
        num_rounds=4,
        local_steps=4,
        batch_size=4,
        max_seq_len=256,
        topk_experts=8,
        eval_samples=16,
        output_dir="runs/demo",
    ),
    # The paper's protocol (DESIGN §1.5), for GPU users.
    "paper": dict(
        num_clients=20,
        sample_clients=2,
        num_rounds=20,
        local_steps=10,
        batch_size=16,
        learning_rate=5e-4,
        topk_experts=32,
        max_seq_len=512,
        eval_samples=250,
        output_dir="runs/paper",
    ),
}


def _coerce(name: str, value: Any, source: str) -> Any:
    field_types = {f.name: f.type for f in fields(RunConfig)}
    if name not in field_types:
        known = ", ".join(sorted(field_types))
        raise ConfigError(f"{source}: unknown setting '{name}'; known settings: {known}")
    kind = field_types[name]
    if kind.endswith(" | None"):
        if value is None:
            return None
        kind = kind.removesuffix(" | None")
    if kind in ("int",) and isinstance(value, bool):
        raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}")
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "bool": bool, "str": str}.get(kind)
    if expected is not None and not isinstance(value, expected):
        raise ConfigError(f"{source}: '{name}' must be a {kind}, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept either top-level keys or a [smartfed] table.
    data = data.get("smartfed", data)
    return {key: _coerce(key, value, str(path)) for key, value in data.items()}


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < preset < TOML file < explicit overrides (None values are ignored)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    if config_file is not None:
        values.update(load_toml(config_file))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    return RunConfig(**values)


def config_from_dict(data: dict[str, Any], *, source: str) -> RunConfig:
    return RunConfig(**{key: _coerce(key, value, source) for key, value in data.items()})
