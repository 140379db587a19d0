"""``smartfed eval``: score the base model, an adapter, a pool module or a run on a benchmark."""

from __future__ import annotations

import argparse

from rich.console import Console

console = Console(stderr=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    from smartfed.engine.config import MODEL_DTYPES
    from smartfed.evaluation.benchmarks import (
        DEFAULT_TIMEOUT_S,
        LOSS_DEFAULT_DATA,
        LOSS_DEFAULT_MAX_SEQ_LEN,
        LOSS_DEFAULT_SPLIT,
        benchmark_names,
    )

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a benchmark and write a JSON result",
        description=(
            "Evaluate the default base model (no model flag), a PEFT adapter folder, a pool "
            "module or a finished run directory. Generative benchmarks decode greedily; "
            "`loss` reports answer-token loss and perplexity on a held-out split."
        ),
    )
    parser.add_argument("--benchmark", required=True, choices=benchmark_names())
    target = parser.add_argument_group("what to evaluate (default: the base model)")
    target.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        default=None,
        help="base model (default: smollm2-135m-instruct, or the run's)",
    )
    target.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder or hub id")
    target.add_argument("--pool_module", default=None, help="registered pool module name")
    target.add_argument("--run", dest="run_dir", default=None, help="SmartFed run directory")
    target.add_argument("--pool_manifest", default=None, help="extra pool manifest JSON")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--output", default=None, help="write the JSON result to this file")
    parser.add_argument("--data_dir", default=None, help="dataset folder (default: env, bundled)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--device",
        default=None,
        help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=MODEL_DTYPES,
        help="precision of the base model (default: the run's --dtype with --run, else float32)",
    )
    # Options of one kind of benchmark: default None, so that giving one to the other kind is
    # refused (the benchmark applies the real defaults).
    generative = parser.add_argument_group("generative benchmarks only")
    generative.add_argument(
        "--max_new_tokens",
        type=int,
        default=None,
        help="generation budget (default: per benchmark)",
    )
    generative.add_argument(
        "--timeout_s",
        type=float,
        default=None,
        help=f"sandbox wall time per generated program (default: {DEFAULT_TIMEOUT_S:g})",
    )
    loss = parser.add_argument_group("loss only")
    loss.add_argument(
        "--data",
        default=None,
        help=f"dataset to score (default: the run's task eval set, else {LOSS_DEFAULT_DATA})",
    )
    loss.add_argument(
        "--split",
        default=None,
        help=f"split (default: the run's task eval split, else {LOSS_DEFAULT_SPLIT})",
    )
    loss.add_argument(
        "--max_seq_len",
        type=int,
        default=None,
        help=f"longest encoded example in tokens (default: {LOSS_DEFAULT_MAX_SEQ_LEN})",
    )
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from smartfed.evaluation.benchmarks import EvalSettings, get_benchmark
    from smartfed.evaluation.harness import load_eval_target, write_result

    benchmark = get_benchmark(args.benchmark)
    if args.run_dir:  # a wrong --run fails first, before any data is read
        from smartfed.engine.rundir import RunDirectory

        RunDirectory(args.run_dir).read_config(flag="--run")
    settings = EvalSettings(
        limit=args.limit,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        run_dir=args.run_dir,
        max_new_tokens=args.max_new_tokens,
        timeout_s=args.timeout_s,
        data=args.data,
        split=args.split,
        max_seq_len=args.max_seq_len,
    )
    benchmark.check(settings)  # flags of the other kind, missing data: before the model loads

    target = load_eval_target(
        args.model,
        adapter=args.adapter,
        pool_module=args.pool_module,
        run_dir=args.run_dir,
        pool_manifest=args.pool_manifest,
        device=args.device,
        dtype=args.dtype,
    )
    result = benchmark.evaluate(target, settings)
    what = target.description.get("adapter") or target.description.get("run_dir") or "base model"
    console.print(f"{what}: {benchmark.summary(result)} in {result['seconds']['total']:.0f} s")
    if args.output:
        path = write_result(result, args.output)
        console.print(f"wrote {path}")
    return 0
