"""``smartfed lm-eval``: score a finished run with lm-evaluation-harness (optional extra).

lm-eval's own options keep their lm-eval names (``--tasks``, ``--num_fewshot``, ``--limit``,
``--batch_size``, ``--include_path``, ``--gen_kwargs``, ``--system_instruction``,
``--fewshot_as_multiturn``, ``--log_samples``, ``--confirm_run_unsafe_code``). One difference:
the chat template is applied unless ``--no_chat_template`` (lm-eval's default is off; SmartFed
trains with it). See :mod:`smartfed.evaluation.lm_harness`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lm-eval",
        help="score a finished run with lm-evaluation-harness (pip install 'smartfed[lm_eval]')",
        description=(
            "Runs lm-eval's HFLM on the run's model (smartfed.load_run) and writes lm-eval's "
            "JSON to RUN/lm_eval/TASKS.json and one line per task to RUN/lm_eval.jsonl. The "
            "chat template is applied unless --no_chat_template. Code-execution tasks "
            "(humaneval, mbpp) run model-written code outside SmartFed's sandbox and need "
            "--confirm_run_unsafe_code."
        ),
    )
    parser.add_argument("--run", dest="run_dir", required=True, help="SmartFed run directory")
    parser.add_argument(
        "--tasks", required=True, help="comma-separated lm-eval task names (or YAML files)"
    )
    parser.add_argument("--include_path", action="append", default=None,
                        help="folder of extra lm-eval task YAMLs (repeatable)")  # fmt: skip
    parser.add_argument("--num_fewshot", type=int, default=None)
    parser.add_argument("--limit", type=float, default=None,
                        help="first N documents per task (or a fraction < 1)")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--no_chat_template",
        action="store_true",
        help="lm-eval's plain prompts instead of the tokenizer's chat template",
    )
    parser.add_argument(
        "--fewshot_as_multiturn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="few-shot examples as chat turns (default: with the chat template)",
    )
    parser.add_argument("--system_instruction", default=None)
    parser.add_argument("--gen_kwargs", default=None, help="e.g. temperature=0,max_gen_toks=256")
    parser.add_argument("--log_samples", action="store_true", help="keep every sample in the JSON")
    parser.add_argument(
        "--confirm_run_unsafe_code",
        action="store_true",
        help="allow tasks that execute model-generated code (humaneval, mbpp) OUTSIDE "
        "SmartFed's sandbox",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--model", default=None, help="another copy of the run's base model")
    parser.add_argument("--pool_manifest", default=None, help="extra pool manifest JSON")
    parser.set_defaults(func=cmd_lm_eval)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from smartfed.engine.rundir import RunDirectory
    from smartfed.evaluation.lm_harness import format_line, require_lm_eval, run_lm_eval

    require_lm_eval()
    RunDirectory(args.run_dir).read_config(flag="--run")  # a wrong --run fails before loading
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    done = run_lm_eval(
        args.run_dir,
        tasks,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        chat_template=not args.no_chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn,
        system_instruction=args.system_instruction,
        gen_kwargs=args.gen_kwargs,
        confirm_run_unsafe_code=args.confirm_run_unsafe_code,
        log_samples=args.log_samples,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        model_name_or_path=args.model,
        pool_manifest=args.pool_manifest,
    )
    for line in done["lines"]:
        print(format_line(line))
    print(f"wrote {done['path']}")
    return 0
