"""``smartfed run``: a federated run (flags follow the paper's README).

Every flag is generated from a settings field: the shared ones from ``RunConfig``, the method
ones from each registered method's settings class (the help says which methods declare it).
Defaults are None here so that only flags the user gave override the preset / config file; a
method flag the chosen method does not declare is refused (``smartfed.assembly.config``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import Field

from smartfed.assembly.config import PRESETS, config_from_dict, gather, method_settings_index
from smartfed.engine.config import RESUMABLE_HARDWARE, RunConfig
from smartfed.engine.rundir import RunDirectory
from smartfed.engine.settings import kind_of
from smartfed.errors import ConfigError
from smartfed.methods.registry import get_method

# Settings that are not flags of their own: --preset and --resume have their own meaning here.
_NOT_FLAGS = ("preset", "resume")


def setting_flags() -> dict[str, Field]:
    """Every setting flag: shared ones first, then method ones (first declaration wins)."""
    flags = {f.name: f for f in RunConfig.setting_fields() if f.name not in _NOT_FLAGS}
    for name, owners in method_settings_index().items():
        if name in flags:
            raise ConfigError(f"method setting '{name}' of {owners[0]} shadows a shared setting")
        flags[name] = get_method(owners[0]).settings_class.field_named(name)
    return flags


def _add_flag(parser: argparse.ArgumentParser, item: Field, owners: list[str] | None) -> None:
    kind, _ = kind_of(item)
    text = item.metadata["help"]
    if owners:
        # Methods sharing a setting name may describe it differently: show each wording once.
        helps = [get_method(o).settings_class.field_named(item.name).metadata["help"]
                 for o in owners]  # fmt: skip
        text = f"{' / '.join(dict.fromkeys(helps))} [{', '.join(owners)}]"
    choices = item.metadata.get("choices")
    if kind is bool:
        parser.add_argument(
            f"--{item.name}", action=argparse.BooleanOptionalAction, default=None, help=text
        )
    else:
        parser.add_argument(f"--{item.name}", type=kind, choices=choices, default=None, help=text)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="smoke | demo | paper")
    parser.add_argument("--config", metavar="FILE.toml", help="settings file (flags override it)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last committed round (after a crash, a kill or "
        "a full disk); the only way to continue a run",
    )
    index = method_settings_index()
    shared = parser.add_argument_group("shared settings")
    method = parser.add_argument_group(
        "method settings", "each applies to the methods in brackets and is refused for others"
    )
    for name, item in setting_flags().items():
        owners = index.get(name)
        _add_flag(method if owners else shared, item, owners)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a federated fine-tuning method")
    add_run_arguments(parser)
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="print parameter counts, the memory one client needs and the bytes per round for "
        "these settings, then exit (reads no weights and no data)",
    )
    parser.set_defaults(func=cmd_run)


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    return {n: getattr(args, n) for n in setting_flags() if getattr(args, n, None) is not None}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    if args.resume:
        settings = given_settings(args)
        for name in ("dtype", "load_in_4bit"):
            if name in settings:
                raise ConfigError(
                    f"--{name} cannot be given with --resume: a resumed run keeps the precision "
                    "in its config.json (another one would change its numerics mid-run)"
                )
        given = [name for name in settings if name not in RESUMABLE_HARDWARE]
        if args.preset or args.config or given:
            raise ConfigError(
                "--resume DIR continues a run with its saved config.json; do not combine it "
                f"with --preset, --config or other settings (got: {', '.join(given) or 'preset'}; "
                f"only {', '.join('--' + n for n in RESUMABLE_HARDWARE)} may change)"
            )
        hardware = {k: v for k, v in settings.items() if k in RESUMABLE_HARDWARE}
        return resume_config(args.resume, hardware)
    values = gather(preset=args.preset, config_file=args.config, overrides=given_settings(args))
    return values.config_for()


def resume_config(run_dir: str, hardware: dict[str, object] | None = None) -> RunConfig:
    """The saved config of the run in ``run_dir``, to continue it; ``hardware`` may change
    the settings in ``RESUMABLE_HARDWARE`` (e.g. another --device: checkpoints are CPU float32,
    so a run continues on any device). config.json then records the new values."""
    from smartfed.assembly.config import is_current_format

    saved = RunDirectory(run_dir).read_config()
    if not is_current_format(saved):
        raise ConfigError(
            f"--resume {run_dir}: this run was written by SmartFed "
            f"{saved.get('smartfed_version', '0.1')} (config format 1) and cannot be continued "
            "by this version; `smartfed report` and `smartfed eval --run` still read it"
        )
    saved.update(output_dir=run_dir, resume=True, overwrite=False, **(hardware or {}))
    return config_from_dict(saved, source=f"{run_dir}/config.json")


def check_inputs(config: RunConfig) -> None:
    """Fail on bad task, data or pool names, a pool module whose files no longer match their
    pins, an --output_dir that cannot be written (or a --report_to backend that is not
    installed) before any model is loaded."""
    from smartfed.assembly.runtime import check_hardware
    from smartfed.data import load_examples
    from smartfed.data.targets import user_target_examples
    from smartfed.data.tasks import get_task
    from smartfed.engine.rundir import check_output_dir
    from smartfed.pool import PoolRegistry, resolve_pool_item
    from smartfed.telemetry.reporting import check_reporter

    check_reporter(config.report_to)
    check_hardware(config)  # --device cuda without CUDA, --load_in_4bit without bitsandbytes
    check_output_dir(config.output_dir)  # an existing file, a read-only place
    logging.disable(logging.INFO)  # the run itself logs where its data comes from, once
    try:
        task = get_task(config.task)
        splits = [(task.train_dataset, task.train_split)]
        if config.eval_split == "test":  # validation is carved from train: never open test
            splits.append((task.eval_dataset, task.eval_split))
        for dataset, split in splits:
            load_examples(dataset, split, data_dir=config.data_dir, limit=1)
        if config.target_samples and config.target_data is not None:
            user_target_examples(config.target_data, config.target_split, limit=1)
        elif config.target_samples:
            load_examples(task.target_dataset, config.target_split, limit=1)
        registry = PoolRegistry.default(config.pool_manifest)
        for item in config.pool_items:
            resolve_pool_item(item, registry)  # and checks a registered module's pins
    finally:
        logging.disable(logging.NOTSET)


def cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if getattr(args, "dry_run", False):
        from smartfed.cli.dry_run import print_dry_run

        print_dry_run(config)
        return 0
    check_inputs(config)
    from smartfed.federation.runner import run_federated

    summary = run_federated(config)
    if summary:
        keys = ("rounds", "bytes_down", "bytes_up", "wall_s", "energy_kwh")
        shown = {k: summary[k] for k in (*keys, "initial_eval", "final_eval", "final_target")}
        print(json.dumps(shown, indent=1))
        print(f"run directory: {config.output_dir}")
    return 0
