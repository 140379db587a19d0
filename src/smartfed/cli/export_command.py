"""``smartfed export`` (a finished run as a PEFT-layout folder) and ``smartfed export-base``
(the base model as a Hugging Face folder: for the default model, its de-quantized weights)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a finished run as a PEFT-layout adapter folder (with tokenizer and card)",
        description=(
            "FedIT and FFA-LoRA: the run's PEFT LoRA. merge and LoRAHub: their weighted pool "
            "sum as one plain LoRA (exact). SmartFed and MoLE: a self-contained folder holding "
            "the routers and the pool modules they route over, loaded by "
            "smartfed.hf.from_pretrained(base, folder). Every export has the tokenizer and a "
            "README.md naming the base model exactly."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished SmartFed run directory")
    parser.add_argument("--to", required=True, metavar="DIR", help="new or empty folder")
    parser.add_argument(
        "--model", default=None, help="another copy of the run's base model (default: the run's)"
    )
    parser.add_argument("--pool_manifest", default=None, help="extra pool manifest JSON")
    parser.set_defaults(func=cmd_export)

    base = subparsers.add_parser(
        "export-base",
        help="write the base model as a Hugging Face folder (the default: de-quantized GGUF)",
        description=(
            "Writes the weights a run loads, as config.json + safetensors + tokenizer: for the "
            "default model, SmolLM2-135M-Instruct de-quantized from its Q4_1 GGUF file (not the "
            "hub's weights). Exported adapters load onto this folder."
        ),
    )
    base.add_argument("--to", required=True, metavar="DIR", help="new or empty folder")
    base.add_argument("--model", default="smollm2-135m-instruct", help="default: %(default)s")
    base.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="default: %(default)s",
    )  # fmt: skip
    base.set_defaults(func=cmd_export_base)


def cmd_export(args: argparse.Namespace) -> int:
    from smartfed.hf.export import check_export, export_run

    check_export(args.run_dir, args.to)  # refusals before any model loads
    info = export_run(
        args.run_dir, args.to, model_name_or_path=args.model, pool_manifest=args.pool_manifest
    )
    kind = "PEFT LoRA adapter" if info["kind"] == "lora" else "SmartFed routed adapter"
    print(f"wrote {args.to}: {kind} of method {info['method']} (see its README.md)")
    return 0


def cmd_export_base(args: argparse.Namespace) -> int:
    from smartfed.errors import ConfigError
    from smartfed.models import load_base_model
    from smartfed.utils.io import write_dir_atomic

    target = Path(args.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--to {target} is not a new or empty folder")
    loaded = load_base_model(args.model, dtype=args.dtype)

    def fill(tmp: Path) -> None:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)

    if target.is_dir():
        target.rmdir()
    write_dir_atomic(target, fill)
    print(f"wrote {target}: {loaded.source.display_name} in {args.dtype}")
    return 0
