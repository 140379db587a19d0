"""``smartfed pool list | show | validate | lock | build``."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from smartfed.errors import PoolError
from smartfed.models import DEFAULT_MODEL
from smartfed.pool import PoolRegistry, load_pool_module

# Pipes and CI logs get 120 columns instead of rich's 80, so tables stay one line per row.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def register(subparsers: argparse._SubParsersAction) -> None:
    pool = subparsers.add_parser("pool", help="list, inspect and validate LoRA pool modules")
    pool_sub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)

    def with_manifest(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--pool_manifest",
            default=None,
            help="extra pool manifest JSON (also $SMARTFED_POOL_MANIFEST); overrides built-ins",
        )
        return p

    p_list = with_manifest(pool_sub.add_parser("list", help="registered pool modules"))
    p_list.set_defaults(func=cmd_list)

    p_show = with_manifest(pool_sub.add_parser("show", help="details of one pool module"))
    p_show.add_argument("module", metavar="NAME|PATH")
    p_show.set_defaults(func=cmd_show)

    p_val = with_manifest(
        pool_sub.add_parser("validate", help="check a pool module against a base model")
    )
    p_val.add_argument("module", metavar="NAME|PATH")
    p_val.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        default=DEFAULT_MODEL,
        help=f"base model to validate against (default: {DEFAULT_MODEL})",
    )
    p_val.set_defaults(func=cmd_validate)

    p_lock = with_manifest(
        pool_sub.add_parser(
            "lock",
            help="pin registered modules' files (sha256 in their manifest) after a deliberate "
            "change",
        )
    )
    p_lock.add_argument("names", nargs="+", metavar="NAME")
    p_lock.set_defaults(func=cmd_lock)

    p_build = pool_sub.add_parser("build", help="train a LoRA pool module with PEFT")
    p_build.add_argument("name")
    p_build.add_argument("--data", required=True, help="registered dataset name")
    p_build.add_argument("--split", default="train")
    p_build.add_argument("--shard", default=None, help="I/N: every N-th example from I")
    p_build.add_argument("--limit", type=int, default=None)
    p_build.add_argument("--data_dir", default=None)
    p_build.add_argument("--rank", type=int, default=32)
    p_build.add_argument("--alpha", type=float, default=64)
    p_build.add_argument("--targets", default="q_proj,v_proj")
    p_build.add_argument("--steps", type=int, default=200)
    p_build.add_argument("--batch_size", type=int, default=8)
    p_build.add_argument("--learning_rate", type=float, default=2e-4)
    p_build.add_argument("--max_seq_len", type=int, default=256)
    p_build.add_argument("--seed", type=int, default=0)
    p_build.add_argument("--skill", default="")
    p_build.add_argument(
        "--save_dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="storage dtype of the adapter weights (float16 halves the size)",
    )
    p_build.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="precision of the frozen base model while training (the LoRA stays float32)",
    )
    p_build.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps",
    )
    p_build.add_argument(
        "--checkpoint_every",
        type=int,
        default=25,
        help="steps between resumable checkpoints in <output>.build/ (rerun to resume)",
    )
    p_build.add_argument("--model", "--model_name_or_path", dest="model", default=DEFAULT_MODEL)
    p_build.add_argument(
        "--manifest", default=None, help="manifest to add the module to (default: user manifest)"
    )
    p_build.add_argument("--output_dir", default=None, help="adapter folder (default: beside it)")
    p_build.set_defaults(func=cmd_build)


def cmd_list(args: argparse.Namespace) -> int:
    registry = PoolRegistry.default(args.pool_manifest)
    table = Table(title="LoRA pool modules", title_justify="left")
    for column in ("name", "skill", "rank", "alpha", "targets", "base model", "available"):
        table.add_column(column)
    for name in registry.names():
        entry = registry.entries[name]
        table.add_row(
            name,
            entry.skill,
            str(entry.rank),
            f"{entry.alpha:g}",
            ",".join(entry.target_modules),
            entry.base_model,
            "yes" if entry.is_available() else f"no ({entry.recipe.get('status', 'missing')})",
        )
    console.print(table)
    console.print("manifests: " + ", ".join(str(m) for m in registry.manifests))
    return 0


def _load(args: argparse.Namespace):
    registry = PoolRegistry.default(args.pool_manifest)
    if args.module in registry.entries and not registry.entries[args.module].is_available():
        return registry.entries[args.module], None
    # Showing a module is how a changed one is inspected: the pins are reported, not enforced.
    adapter, entry = load_pool_module(args.module, registry, verify_pins=False)
    return entry, adapter


def _print_adapter(adapter) -> None:
    console.print(f"[bold]{adapter.name}[/bold]  {adapter.source}")
    console.print(f"  trained on      {adapter.base_model_name or 'unknown'}")
    console.print(f"  target modules  {', '.join(adapter.target_modules)}")
    console.print(
        f"  ranks           {adapter.ranks}   alphas {[f'{a:g}' for a in adapter.alphas]}"
    )
    console.print(f"  rsLoRA          {adapter.use_rslora}")
    console.print(
        f"  matrices        {len(adapter.matrices)}   parameters {adapter.num_parameters:,}"
    )
    console.print(f"  fingerprint     {adapter.fingerprint()[:16]}")


def cmd_show(args: argparse.Namespace) -> int:
    entry, adapter = _load(args)
    if entry is not None:
        console.print(f"[bold]{entry.name}[/bold] (manifest {entry.manifest})")
        console.print(f"  skill           {entry.skill}")
        console.print(f"  source          {entry.resolved_source()}")
        console.print(f"  base model      {entry.base_model}")
        console.print(
            f"  recorded shape  rank {entry.rank}, alpha {entry.alpha:g}, "
            f"targets {', '.join(entry.target_modules)}"
        )
        for key, value in entry.recipe.items():
            console.print(f"  {'recipe.' + key:<15} {value}")
        if entry.is_available():
            from smartfed.pool.pinning import pin_status

            console.print(f"  pinned          {pin_status(entry)}", soft_wrap=True)
    if adapter is not None:
        _print_adapter(adapter)
    else:
        console.print("  adapter files   missing (not built yet)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from smartfed.models.loading import resolve_model_source
    from smartfed.models.meta import load_model_config, meta_base_model

    adapter, _ = load_pool_module(args.module, PoolRegistry.default(args.pool_manifest))
    # Module names and shapes are all validation needs: the model's config gives them on an
    # empty (meta) model, so no weights are read and no tokenizer is needed.
    model = meta_base_model(load_model_config(args.model), "float32")
    adapter.validate_against(model)
    _print_adapter(adapter)
    per_target: dict[str, int] = {}
    for module_name in adapter.matrices:
        short = module_name.rsplit(".", 1)[-1]
        per_target[short] = per_target.get(short, 0) + 1
    layers = ", ".join(f"{k}: {v} layers" for k, v in sorted(per_target.items()))
    console.print(
        f"[green]OK[/green]: {len(adapter.matrices)} matrices fit "
        f"{resolve_model_source(args.model).display_name} "
        f"({layers}); weights finite; {sum(m.rank for m in adapter.matrices.values())} "
        "rank-1 experts"
    )
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from smartfed.pool.pinning import lock_entry

    registry = PoolRegistry.default(args.pool_manifest)
    for name in args.names:
        if name not in registry.entries:
            known = ", ".join(registry.names()) or "none"
            raise PoolError(
                f"pool lock {name}: no registered module of that name (known: {known}; from "
                f"{', '.join(str(m) for m in registry.manifests)}); a module is pinned in the "
                "manifest that registers it"
            )
        # Only an adapter that loads as a plain LoRA and matches its record is pinned.
        _, entry = load_pool_module(name, registry, verify_pins=False)
        previous, pinned = lock_entry(entry)
        files = ", ".join(f"{file} {digest[:12]}" for file, digest in sorted(pinned.items()))
        what = "unchanged" if previous == pinned else "re-pinned" if previous else "pinned"
        console.print(f"{what} {name}: {files} (in {entry.manifest})", soft_wrap=True)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from smartfed.pool.build import BuildRecipe, build_pool_module

    recipe = BuildRecipe(
        dataset=args.data,
        split=args.split,
        shard=args.shard,
        limit=args.limit,
        rank=args.rank,
        alpha=args.alpha,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        data_dir=args.data_dir,
        save_dtype=args.save_dtype,
        dtype=args.dtype,
    )
    entry = build_pool_module(
        args.name,
        recipe,
        model_name_or_path=args.model,
        manifest=args.manifest,
        output_dir=args.output_dir,
        skill=args.skill,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
    )
    console.print(
        f"[green]built[/green] {entry.name}: loss {entry.recipe['initial_loss']:.3f} -> "
        f"{entry.recipe['final_loss']:.3f} over {recipe.steps} steps; adapter "
        f"{entry.resolved_source()}; manifest {entry.manifest}"
    )
    return 0
