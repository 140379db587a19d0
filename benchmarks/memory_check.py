"""Check ``smartfed run --dry_run``'s memory estimate against one measured training step.

For each batch × sequence size, a fresh Python process builds the run's method (SmartFed with
the demo preset's settings: pool cn_chat,en_math, K = 8) on the model, warms up with one tiny
step, then measures how much memory one local training step (``train_local``: forward, backward,
AdamW step, importance tracking on) adds on top of what was allocated before it:

- CPU: freed heap is first handed back to the kernel (glibc ``malloc_trim``) and the process's
  peak resident set is reset (``/proc/self/clear_refs``); the growth is VmHWM after the step
  minus VmRSS before it. Page-granular; it includes the allocator's overheads: glibc serves
  allocations below its (self-raising, up to 32 MiB) mmap threshold from heaps that fragment,
  so the peak RSS exceeds the peak of live tensors. ``--fixed_mmap_threshold`` sets
  ``MALLOC_MMAP_THRESHOLD_=65536`` in the measuring processes: every tensor of 64 KiB or more
  then gets its own mapping, returned when freed, and the peak RSS follows the live tensors.
  A fresh process per size keeps one size's heap from serving another.
- CUDA: ``torch.cuda.max_memory_allocated()`` after the step minus ``memory_allocated()``
  before it, after ``reset_peak_memory_stats()`` (the caching allocator's own count).

The growth holds the activations plus what does not depend on the size (gradients, AdamW's
moments, autocast's weight copies, workspaces). The check is on the *difference* of growth
between two sizes, so no constant can make it agree: the estimate's activation difference
(``smartfed.models.memory``; the estimate has no constant fitted to these measurements) is
compared with the measured difference of growth.

Each batch is random token ids of exactly B × T, right-padded like a real batch (the last row's
last T/8 tokens are padding, so attention runs with a padding mask as in training), the first
T/4 tokens of each row masked out of the loss as a prompt.

    .venv/bin/python benchmarks/memory_check.py                  # CPU, float32, default model
    .venv/bin/python benchmarks/memory_check.py --device cuda --dtype bfloat16 \\
        --model benchmarks/model_configs/smollm2-135m-instruct --random_weights --json out.json

``--random_weights`` builds the model from a config folder with random weights (memory does
not depend on the weights' values): for a machine without the default model's file.
Results: printed as a table and written to ``benchmarks/results/memory_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "memory_check.json"
DEFAULT_SIZES = "2x128,8x256,4x512"
# (size a, size b) pairs whose growth difference is compared: the first is the acceptance pair.
DEFAULT_PAIRS = "2x128:8x256,2x128:4x512"
MIB = 1024**2


def parse_size(text: str) -> tuple[int, int]:
    batch, seq = text.lower().split("x")
    return int(batch), int(seq)


def run_config(batch: int, seq: int, args: argparse.Namespace):
    from smartfed.assembly.config import gather

    overrides = {
        "method": "smartfed",
        "model_name_or_path": args.model,
        "batch_size": batch,
        "max_seq_len": seq,
        "dtype": args.dtype,
        "device": args.device,
        "gradient_checkpointing": args.gradient_checkpointing,
        "output_dir": "runs/memory_check",
    }
    return gather(preset="demo", overrides=overrides).config_for()


def estimate(batch: int, seq: int, args: argparse.Namespace) -> dict:
    from smartfed.assembly.dryrun import plan_run
    from smartfed.models.memory import breakdown_json

    plan = plan_run(run_config(batch, seq, args))
    return dict(breakdown_json(plan.memory))


# ---------------------------------------------------------------------- one measured size
def _batch(batch: int, seq: int, vocab: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[-1, seq - max(1, seq // 8) :] = 0  # right padding, as collate makes it
    labels = input_ids.clone()
    labels[:, : seq // 4] = -100  # the prompt
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _build(batch: int, seq: int, args: argparse.Namespace):
    import torch

    from smartfed.methods import build_method
    from smartfed.models import load_base_model
    from smartfed.models.meta import load_model_config
    from smartfed.pool import PoolRegistry, load_pool

    config = run_config(batch, seq, args)
    dtype = getattr(torch, args.dtype)
    if args.random_weights:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(load_model_config(args.model), dtype=dtype)
        model.requires_grad_(False)
        if args.gradient_checkpointing:
            from smartfed.models import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
    else:
        model = load_base_model(
            args.model, dtype=dtype, gradient_checkpointing=args.gradient_checkpointing
        ).model
    pool = load_pool(config.pool_items, PoolRegistry.default(config.pool_manifest))
    torch.manual_seed(config.seed)
    method = build_method(config, model, pool)
    method.model.to(args.device)
    return config, method, model.config.vocab_size


def _step(method, config, batch: dict) -> None:
    from smartfed.engine.training import train_local

    train_local(
        method,
        iter([batch]),
        global_state=method.global_state(),
        local_state=method.local_state(),
        round_config=method.server_logic(config).round_config(),
        local_steps=1,
        learning_rate=config.settings.learning_rate,
        num_examples=1,
        seed=config.seed,
    )


def measure_one(batch: int, seq: int, args: argparse.Namespace) -> dict:
    """The memory growth of one training step at batch × seq, in this process."""
    import torch

    from smartfed.models.memory_probe import memory_probe

    config, method, vocab = _build(batch, seq, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    _step(method, config, _batch(1, 16, vocab, seed=1))  # lazy initialisations, off the record
    data = _batch(batch, seq, vocab, seed=0)
    probe = memory_probe(torch.device(args.device))
    seconds: list[float] = []

    def step() -> None:  # timed alone: the probe's preparation is not the step
        started = time.perf_counter()
        _step(method, config, data)
        seconds.append(time.perf_counter() - started)

    measured = probe.measure(step)
    if measured is None:
        raise SystemExit(f"memory cannot be measured on {args.device} here: {probe.note}")
    return {
        "batch": batch,
        "seq_len": seq,
        "measured_growth": measured.growth,
        "before": measured.before,
        "step_s": round(seconds[0], 2),
    }


# ---------------------------------------------------------------------- driver
def _child(size: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, __file__, "--one", size, "--model", args.model]
    command += ["--dtype", args.dtype, "--device", args.device, "--threads", str(args.threads)]
    if args.random_weights:
        command.append("--random_weights")
    if args.gradient_checkpointing:
        command.append("--gradient_checkpointing")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"measuring {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(rows: dict, pairs: str) -> list[dict]:
    """Per pair "a:b": measured growth(b) - growth(a) against the estimate's difference."""
    comparisons = []
    for pair in (p.strip() for p in pairs.split(",") if p.strip()):
        small, large = pair.split(":")
        if small not in rows or large not in rows:
            continue
        measured = rows[large]["measured_growth"] - rows[small]["measured_growth"]
        estimates = rows[large]["estimate"], rows[small]["estimate"]
        estimated = estimates[0]["activations"] - estimates[1]["activations"]
        error = (estimated - measured) / measured
        comparisons.append(
            {
                "small": small,
                "large": large,
                "measured_growth_difference": measured,
                "estimated_difference": estimated,
                "relative_error": error,
                "within_25_percent": abs(error) <= 0.25,
            }
        )
    return comparisons


def print_tables(rows: dict, comparisons: list[dict]) -> None:
    print("\n| B x T | measured step growth | estimated activations | estimated growth |")
    print("|---|---|---|---|")
    for size, row in rows.items():
        est = row["estimate"]
        growth = est["activations"] + est["gradients"] + est["optimizer_AdamW"]
        measured = row["measured_growth"] / MIB
        print(f"| {size} | {measured:.1f} MiB | {est['activations'] / MIB:.1f} MiB "
              f"| {growth / MIB:.1f} MiB |")  # fmt: skip
    print("(estimated growth: activations + gradients + AdamW moments)")
    print("\n| pair | measured growth difference | estimated difference | error |")
    print("|---|---|---|---|")
    for c in comparisons:
        measured, estimated = c["measured_growth_difference"], c["estimated_difference"]
        print(f"| {c['small']} -> {c['large']} | {measured / MIB:.1f} MiB "
              f"| {estimated / MIB:.1f} MiB | {c['relative_error']:+.1%} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--random_weights", action="store_true",
                        help="build --model (a config folder) with random weights")  # fmt: skip
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="B x T sizes, e.g. 2x128,8x256")
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="compared pairs, e.g. 2x128:8x256")
    parser.add_argument("--fixed_mmap_threshold", action="store_true",
                        help="CPU: MALLOC_MMAP_THRESHOLD_=65536 when measuring")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=str(RESULTS), help="where to write the results")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure_one(*parse_size(args.one), args)))
        return 0

    rows = {}
    for size in (s.strip() for s in args.sizes.split(",") if s.strip()):
        row = _child(size, args)
        row["estimate"] = estimate(*parse_size(size), args)
        rows[size] = row
        print(f"{size}: measured growth {row['measured_growth'] / MIB:.1f} MiB, estimated "
              f"activations {row['estimate']['activations'] / MIB:.1f} MiB "
              f"(step {row['step_s']} s)", flush=True)  # fmt: skip
    comparisons = compare(rows, args.pairs)
    print_tables(rows, comparisons)

    import torch
    import transformers

    if args.device.startswith("cuda"):
        measure = "CUDA max_memory_allocated growth"
    else:
        measure = "CPU peak RSS growth (malloc_trim, clear_refs, VmHWM - VmRSS)"
        if args.fixed_mmap_threshold:
            measure += ", MALLOC_MMAP_THRESHOLD_=65536"
    result = {
        "what": "memory growth of one training step vs smartfed run --dry_run's estimate",
        "model": args.model,
        "random_weights": args.random_weights,
        "dtype": args.dtype,
        "device": args.device,
        "gradient_checkpointing": args.gradient_checkpointing,
        "method": "smartfed (demo preset: cn_chat,en_math, K=8)",
        "measure": measure,
        "sizes": rows,
        "comparisons": comparisons,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.platform(),
        "command": " ".join(["benchmarks/memory_check.py", *sys.argv[1:]]),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
