"""``smartfed chat``: one answer of a finished run's model to a prompt, as the task renders it.

The prompt is the user turn of the tokenizer's chat template (the rendering the run trained
on: :func:`smartfed.evaluation.generation.render_prompt`), decoded greedily unless a
temperature is given. A quick check that a run produced a working model.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="print a finished run's answer to a prompt (with the task's chat template)",
    )
    parser.add_argument("--run", dest="run_dir", required=True, help="SmartFed run directory")
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default): greedy decoding"
    )
    parser.add_argument("--seed", type=int, default=0, help="for sampling (--temperature > 0)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--dtype", default=None, choices=["float32", "bfloat16", "float16"],
        help="precision of the base model (default: the run's)",
    )  # fmt: skip
    parser.add_argument("--model", default=None, help="another copy of the run's base model")
    parser.add_argument("--pool_manifest", default=None, help="extra pool manifest JSON")
    parser.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from smartfed.engine.rundir import RunDirectory
    from smartfed.errors import ConfigError

    if args.max_new_tokens < 1 or args.temperature < 0:
        raise ConfigError("--max_new_tokens must be >= 1 and --temperature >= 0")
    RunDirectory(args.run_dir).read_config(flag="--run")  # a wrong --run fails before loading
    print(chat(args))
    return 0


def chat(args: argparse.Namespace) -> str:
    import torch

    from smartfed.evaluation.generation import render_prompt
    from smartfed.hf import load_run
    from smartfed.models import model_autocast, model_device

    model, tokenizer = load_run(
        args.run_dir,
        device=args.device,
        dtype=args.dtype,
        model_name_or_path=args.model,
        pool_manifest=args.pool_manifest,
    )
    text = render_prompt(tokenizer, args.prompt)
    add_special = getattr(tokenizer, "chat_template", None) is None  # templates write their BOS
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=add_special)
    batch = {k: v.to(model_device(model)) for k, v in batch.items()}
    sampling = {"do_sample": False}
    if args.temperature > 0:
        torch.manual_seed(args.seed)
        sampling = {"do_sample": True, "temperature": args.temperature}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad(), model_autocast(model):
        out = model.generate(
            **batch, max_new_tokens=args.max_new_tokens, pad_token_id=pad, **sampling
        )
    return tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
