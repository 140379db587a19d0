"""``smartfed eval``: score the base model, an adapter, a pool module or a run on a benchmark."""

from __future__ import annotations

import argparse

from rich.console import Console

from smartfed.errors import ConfigError

console = Console(stderr=True)

# Held-out split scored by ``--benchmark loss`` when no --data is given.
DEFAULT_LOSS_DATA = "gsm8k"


def register(subparsers: argparse._SubParsersAction) -> None:
    from smartfed.evaluation.benchmarks import benchmark_names

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
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="generation budget (default: per benchmark)")  # fmt: skip
    parser.add_argument("--data", default=None,
                        help="loss only: dataset to score (default: the run's task eval set, "
                             f"else {DEFAULT_LOSS_DATA})")  # fmt: skip
    parser.add_argument("--split", default="test", help="loss only: split (default: test)")
    parser.add_argument("--max_seq_len", type=int, default=512, help="loss only")
    parser.add_argument("--timeout_s", type=float, default=10.0,
                        help="sandbox wall time per generated program")  # fmt: skip
    parser.set_defaults(func=cmd_eval)


def _loss_data(args: argparse.Namespace) -> tuple[str, str]:
    if args.data:
        return args.data, args.split
    if args.run_dir:
        from smartfed.data.tasks import get_task
        from smartfed.engine.rundir import RunDirectory

        task = get_task(RunDirectory(args.run_dir).read_config()["task"])
        return task.eval_dataset, task.eval_split
    return DEFAULT_LOSS_DATA, args.split


def cmd_eval(args: argparse.Namespace) -> int:
    from smartfed.evaluation.harness import (
        evaluate_benchmark,
        evaluate_loss,
        load_eval_target,
        write_result,
    )
    from smartfed.evaluation.sandbox import SandboxLimits

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.benchmark == "loss":
        dataset, split = _loss_data(args)
        from smartfed.data.registry import resolve_split_file

        # Fail on missing data before the model loads.
        if "/" not in dataset and not dataset.endswith(".jsonl"):
            resolve_split_file(dataset, split, data_dir=args.data_dir)
    else:
        from smartfed.data.registry import resolve_split_file
        from smartfed.evaluation.benchmarks import get_benchmark

        bench = get_benchmark(args.benchmark)
        resolve_split_file(bench.dataset, bench.split, data_dir=args.data_dir)

    target = load_eval_target(
        args.model,
        adapter=args.adapter,
        pool_module=args.pool_module,
        run_dir=args.run_dir,
        pool_manifest=args.pool_manifest,
    )
    if args.benchmark == "loss":
        result = evaluate_loss(
            target,
            dataset,
            split,
            limit=args.limit,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            max_seq_len=args.max_seq_len,
        )
        summary = (
            f"loss {result['value']:.4f} (ppl {result['perplexity']:.2f}) on {dataset}/{split}, "
            f"{result['n']} examples, {result['tokens']} answer tokens"
        )
    else:
        result = evaluate_benchmark(
            target,
            args.benchmark,
            limit=args.limit,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            sandbox=SandboxLimits(timeout_s=args.timeout_s),
        )
        summary = (
            f"{result['metric']} {result['value']:.4f} ({result['correct']}/{result['n']}) on "
            f"{args.benchmark}"
        )
    what = target.description.get("adapter") or target.description.get("run_dir") or "base model"
    console.print(f"{what}: {summary} in {result['seconds']['total']:.0f} s")
    if args.output:
        path = write_result(result, args.output)
        console.print(f"wrote {path}")
    return 0
