"""``smartfed run``: a federated SmartFed run (flags follow the paper's README)."""

from __future__ import annotations

import argparse
import json
import logging

from smartfed.engine.config import (
    ENGINES,
    PARTITIONS,
    PRESETS,
    config_from_dict,
    resolve_config,
)
from smartfed.engine.rundir import RunDirectory
from smartfed.errors import ConfigError

# flag -> (type, help). Every default is None so only flags the user gave override the
# preset / config file; the real defaults live in RunConfig.
_FLAGS: dict[str, tuple[type, str]] = {
    "method": (str, "federated method (see `smartfed methods`): smartfed, fedit, ffa_lora, ..."),
    "model_name_or_path": (
        str,
        "base model: hub id, HF folder, .gguf file or smollm2-135m-instruct",
    ),
    "lora_pool": (str, "comma-separated pool modules: registered names, PEFT folders, hub ids"),
    "pool_manifest": (str, "extra pool manifest JSON"),
    "task": (str, "task name (e.g. gsm8k, cn_math)"),
    "data_dir": (str, "folder with the datasets (default: $SMARTFED_DATA_DIR, then bundled)"),
    "num_clients": (int, "clients in the federation"),
    "sample_clients": (int, "clients sampled per round"),
    "num_rounds": (int, "communication rounds"),
    "local_steps": (int, "local AdamW steps per client per round"),
    "batch_size": (int, "local batch size"),
    "learning_rate": (float, "AdamW learning rate of what the method trains"),
    "lorahub_learning_rate": (float, "AdamW learning rate of LoRAHub's module weights"),
    "topk_experts": (int, "average expert budget K per matrix"),
    "max_seq_len": (int, "maximum tokens per example"),
    "min_replies": (int, "fewest usable client replies a round may aggregate"),
    "dirichlet_alpha": (float, "Dirichlet concentration for --partition dirichlet"),
    "partition_field": (str, "example field for dirichlet / natural partitions"),
    "eval_every": (int, "evaluate every N rounds (and after the last)"),
    "eval_samples": (int, "held-out examples for the eval loss (0: no evaluation)"),
    "eval_batch_size": (int, "evaluation batch size"),
    "seed": (int, "random seed (sampling, partitions, router init, batches)"),
    "output_dir": (str, "run directory"),
    "output_scale": (str, "MoRE output scale c: k | one | learnable"),
    "importance_score": (str, "importance scorer: cosine | relative_norm"),
    "ema_beta": (float, "EMA weight of past importance"),
    "eeqa_warmup_rounds": (int, "rounds of uniform K before EEQA starts"),
    "k_min": (int, "smallest quota EEQA may give a matrix"),
    "energy_country": (str, "ISO code for CodeCarbon's offline carbon intensity"),
    "metric_samples": (int, "task-benchmark items scored on the final model (0: none)"),
    "lora_rank": (int, "rank of a fresh LoRA (fedit, ffa_lora, fedsa_lora); default: pool's"),
    "lora_alpha": (float, "alpha of a fresh LoRA; default: the pool's"),
    "lora_targets": (str, "comma-separated target modules of a fresh LoRA; default: the pool's"),
    "mole_top_k": (int, "MoLE: pool modules kept per token and matrix"),
    "train_fraction": (float, "keep this seeded share of every client's data (data efficiency)"),
}


_SWITCHES = ("partition", "engine", "enable_eeqa", "dense")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="smoke | demo | paper")
    parser.add_argument("--config", metavar="FILE.toml", help="settings file (flags override it)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR after a crash")
    parser.add_argument("--partition", choices=PARTITIONS, default=None)
    parser.add_argument("--engine", choices=ENGINES, default=None)
    parser.add_argument(
        "--enable_eeqa", action=argparse.BooleanOptionalAction, default=None,
        help="EEQA quota re-allocation (--no-enable_eeqa: uniform K)",
    )  # fmt: skip
    parser.add_argument(
        "--dense", action=argparse.BooleanOptionalAction, default=None,
        help="SmartFed ablation: every expert on every token (K = M, no EEQA)",
    )  # fmt: skip
    for name, (kind, text) in _FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, default=None, help=text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run federated SmartFed")
    add_run_arguments(parser)
    parser.set_defaults(func=cmd_run)


def config_from_args(args: argparse.Namespace):
    if args.resume:
        given = [n for n in (*_FLAGS, *_SWITCHES) if getattr(args, n) is not None]
        if args.preset or args.config or given:
            raise ConfigError(
                "--resume DIR continues a run with its saved config.json; do not combine it "
                f"with --preset, --config or other settings (got: {', '.join(given) or 'preset'})"
            )
        saved = RunDirectory(args.resume).read_config()
        saved.pop("smartfed_version", None)
        saved.update(output_dir=args.resume, resume=True)
        return config_from_dict(saved, source=f"{args.resume}/config.json")
    overrides = {name: getattr(args, name) for name in (*_FLAGS, *_SWITCHES)}
    return resolve_config(preset=args.preset, config_file=args.config, overrides=overrides)


def check_inputs(config) -> None:
    """Fail on bad task, data or pool names before any model is loaded."""
    from smartfed.data import load_examples
    from smartfed.data.tasks import get_task
    from smartfed.pool import PoolRegistry, resolve_pool_item

    logging.disable(logging.INFO)  # the run itself logs where its data comes from, once
    try:
        task = get_task(config.task)
        for dataset, split in (
            (task.train_dataset, task.train_split),
            (task.eval_dataset, task.eval_split),
        ):
            load_examples(dataset, split, data_dir=config.data_dir, limit=1)
        registry = PoolRegistry.default(config.pool_manifest)
        for item in config.pool_items:
            resolve_pool_item(item, registry)
    finally:
        logging.disable(logging.NOTSET)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_inputs(config)
    from smartfed.federation.runner import run_federated

    summary = run_federated(config)
    if summary:
        keys = ("rounds", "bytes_down", "bytes_up", "wall_s", "energy_kwh")
        shown = {k: summary[k] for k in (*keys, "initial_eval", "final_eval")}
        print(json.dumps(shown, indent=1))
        print(f"run directory: {config.output_dir}")
    return 0
