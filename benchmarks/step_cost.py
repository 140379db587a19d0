"""Cost of one local training step: SmartFed's methods, router designs, pool sizes and expert
paths, each measured side by side against the frozen base model in one run.

Run from the repository root; ``--help`` lists every option. Suites (``--suite``, comma-separated,
or ``all``), one module each in ``benchmarks/stepcost/suites/`` (its docstring says what it
measures; ``stepcost/harness.py`` is what they share):

  methods    the frozen base and one local step of each method (``--methods``, default fedit,
             smartfed, mole) in each dtype (``--dtypes``): tokens/s and peak memory, as ratios to
             the frozen base's forward + backward.
  routers    SmartFed with every registered router design, dense (K = M) and top-K
             (``--router_k``), as ratios to the frozen base and to PEFT LoRA of equal total rank M.
  pool_size  pools of ``--pool_sizes`` (default 2, 8, 32) random modules of rank ``--pool_rank``
             (32): step time, memory and router bytes per round as M grows, with a LoRA of rank M
             beside each.
  sparse     MoRE's dense expert path vs its sparse path (only the K selected columns of B) at
             K of ``--sparse_k`` (2, 8) over the pools of ``--sparse_pools`` (2, 32 modules, so
             M = 64, 1024): does K < M save compute on this machine?

A new suite is one module in ``stepcost/suites/``: a ``Suite`` subclass decorated with
``@register`` (its name, its own flags, its run, its markdown table), plus its test in
``tests/test_step_cost_benchmark.py``.

    .venv/bin/python benchmarks/step_cost.py                          # methods suite, default model
    .venv/bin/python benchmarks/step_cost.py --suite all --repeats 3 --batch_size 2 --seq_len 64
    .venv/bin/python benchmarks/step_cost.py --model random --device cuda --suite all  # no file
    .venv/bin/python benchmarks/step_cost.py --model tiny --suite all --repeats 1      # seconds

Models (``--model``): a name or path as ``smartfed run`` takes it (default: SmolLM2-135M-Instruct);
``random`` builds a LlamaForCausalLM of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads,
3 KV heads, MLP 1536, vocab 49,152, tied embeddings) with random weights and no file, so a
machine without the model file or network measures the same shapes; ``random:HxL`` the same
layout at hidden H and L layers (head dim 64, 3:1 grouped KV heads where the heads divide by 3,
MLP 8H/3); ``tiny`` the tests' 2-layer, hidden-32 LLaMA (``smartfed.testing.TINY``). Step cost
does not depend on weight values, so random weights give the real model's cost.

How a step is measured:

- Every variant gets its own model instance whose frozen base weights are *shared* with the
  others (a deep copy that keeps the frozen tensors), so ten variants cost one base model of
  memory. Methods are built by the real registry (``smartfed.methods.build_method`` with a
  RunConfig resolved like ``smartfed run``'s) and moved to the device (the shared base weights
  are already there, so their initial draws differ from a CPU build's: cost does not depend on
  them); SmartFed's importance tracking is on, as in local training.
- A method's step is ``train_local``'s own (``smartfed.engine.training.training_step``): the
  batch (random ids, all tokens real, labels = inputs) under ``smartfed.models.autocast`` for a
  half-precision base, forward with labels, zero_grad, backward, AdamW step. The **base**
  variant runs the frozen model's forward with labels and a backward down to the input
  embeddings (``inputs_embeds`` with ``requires_grad``): the activation-gradient cost every
  adapter method pays, with no weight gradient and no optimizer.
- After ``--warmup`` steps each variant takes one untimed memory step, then the variants run
  interleaved (a, b, c, a, b, c, ...) for ``--repeats`` rounds so machine noise hits all alike.
  Reported: median, min, IQR, tokens/s, ratios of medians to the base and the median of the
  per-repeat paired ratios (which resists steps slowed by other processes). CUDA steps are
  bracketed by ``torch.cuda.synchronize()``.

Memory, per variant (all variants live in one process, so process totals are not per variant):

- **static**: the bytes of the variant's own tensors, counted: base weights, pool experts,
  trainable parameters, AdamW's moments (made by the warm-up step). Shared base weights count
  in full for every variant: the figure is what the variant needs alone.
- **step peak**: measured over the memory step: activations kept for the backward pass,
  gradients and transients. CUDA: ``max_memory_allocated`` minus ``memory_allocated`` just
  before the step, after ``reset_peak_memory_stats`` (the caching allocator's own count).
  CPU (Linux): the growth of the process's peak resident set during the step: freed heap is
  first returned to the kernel (glibc ``malloc_trim``) and the peak reset (``/proc/self/
  clear_refs``), then VmHWM minus VmRSS before the step. Other processes do not affect it; the
  CPU figure is page-granular and includes allocator overheads. Elsewhere: not measured.
- **peak** = static + step peak: one client's training memory without the framework itself
  (CUDA context, libraries, the tokenised data).

Run on a shared machine, single steps can be slowed several-fold by other processes; a warning
names the variants whose max exceeds 1.5 x their min. On a shared CPU pass ``--threads 1``: with
more intra-op threads than free cores, OpenMP threads spin at every barrier waiting for a thread
another process has descheduled, and steps become 10-20 x slower and erratic.

``--json FILE`` writes every step's wall and CPU time; an existing file of this format keeps the
suites this run did not measure. ``--markdown FILE`` prints the tables of such a file.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the stepcost package

from smartfed.models import DEFAULT_MODEL, resolve_device, to_device, torch_dtype
from smartfed.models.memory_probe import MemoryProbe, memory_probe
from stepcost.harness import (
    SEED,
    Context,
    PoolSet,
    console,
    load_frozen_base,
    name_list,
    random_llama_config,
)
from stepcost.suites import all_suites

__all__ = ["JSON_FORMAT", "SUITES", "main", "markdown_report", "parse_args", "random_llama_config"]

SUITES = all_suites()  # name -> Suite class, in order
JSON_FORMAT = "step_cost/2"


# ---------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one local training step of SmartFed's methods, router designs, pool "
        "sizes and expert paths against the frozen base model.",
    )
    parser.add_argument(
        "--suite",
        type=name_list,
        default=["methods"],
        help="comma-separated suites, or all: "
        + "; ".join(f"{name} ({suite.summary})" for name, suite in SUITES.items()),
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model name or path, 'random' (SmolLM2-135M's shape, random "
        "weights), 'random:HxL' or 'tiny'",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtypes",
        type=name_list,
        default=None,
        help="comma-separated base dtypes (default: float32 and bfloat16, plus float16 on CUDA)",
    )
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute activations in the backward pass (every variant)",
    )
    parser.add_argument("--no_memory", action="store_true", help="skip the memory step")
    parser.add_argument(
        "--pool",
        default=None,
        help="methods/routers suites: pool modules as `smartfed run` takes them "
        "(default: the demo pool's shapes, 2 x rank 32 on q/v, random weights)",
    )
    parser.add_argument("--pool_rank", type=int, default=32, help="rank of synthesized modules")
    for suite in SUITES.values():
        suite.add_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    args = parser.parse_args(argv)
    if args.suite == ["all"]:
        args.suite = list(SUITES)
    unknown = sorted(set(args.suite) - set(SUITES))
    if unknown:
        parser.error(f"--suite: unknown {', '.join(unknown)}; expected {', '.join(SUITES)} or all")
    for name in ("batch_size", "seq_len", "repeats", "pool_rank"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.pool is not None and (args.model == "tiny" or args.model.startswith("random")):
        parser.error(
            f"--pool needs the real model its modules were trained on, not --model {args.model}"
        )
    return args


def default_dtypes(device: torch.device) -> list[str]:
    """float32 everywhere, bfloat16 on CPU and CUDA, float16 on CUDA only (CPU autocast lacks
    it, so a float16 step there would not be what training runs)."""
    dtypes = ["float32"]
    if device.type in ("cpu", "cuda"):
        dtypes.append("bfloat16")
    if device.type == "cuda":
        dtypes.append("float16")
    return dtypes


# ---------------------------------------------------------------------------------- main
def environment(device: torch.device, probe: MemoryProbe, argv: list[str] | None) -> dict:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "benchmarks/step_cost.py " + " ".join(argv or []),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "num_threads": torch.get_num_threads(),
        "memory_probe": probe.kind,
        "memory_note": probe.note,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def random_batch(vocab: int, args: argparse.Namespace, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(SEED)
    input_ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator)
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.clone(),
    }
    return to_device(batch, device)


def write_json(path: Path, suites: dict[str, Any]) -> None:
    """Write ``suites``; suites of an existing file of this format that this run did not
    measure are kept (each carries its own environment and settings)."""
    data: dict[str, Any] = {"format": JSON_FORMAT, "suites": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("format") == JSON_FORMAT:
            data["suites"].update(old.get("suites", {}))
    data["suites"].update(suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------- markdown
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(data: dict[str, Any]) -> str:
    """The tables of a ``--json`` file as markdown (``--markdown FILE``): what the results
    pages quote, so they can be regenerated rather than retyped. Each suite writes its own
    table (``Suite.markdown``)."""
    parts = []
    for name, suite in data["suites"].items():
        env = suite["environment"]
        where = env.get("gpu") or f"{env['cpu']}, {env['num_threads']} threads"
        parts.append(f"### {name} ({where}, torch {env['torch']}, {env['date'][:10]})\n")
        parts.append(f"`{env['command']}`\n")
        for dtype, run in suite["by_dtype"].items():
            header, rows, closing = SUITES[name].markdown(run)
            parts.append(f"{dtype}, {run['tokens_per_step']} tokens per step:\n")
            parts.append(_md_table(header, rows) + "\n")
            if closing:
                parts.append(closing)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--markdown"]:
        if len(argv) != 2:
            raise SystemExit("usage: step_cost.py --markdown FILE.json")
        data = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        print(markdown_report(data))
        return data
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype_names = args.dtypes or default_dtypes(device)
    dtypes = {name: torch_dtype(name) for name in dtype_names}
    probe = memory_probe(device, not args.no_memory)
    env = environment(device, probe, argv)
    settings = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"
    }
    console.rule("SmartFed step cost")
    console.print(
        f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"{env.get('gpu', env['cpu'])} | dtypes {', '.join(dtype_names)} | "
        f"batch {args.batch_size} x {args.seq_len} | warm-up {args.warmup}, repeats "
        f"{args.repeats} | memory: {probe.note}"
    )
    results: dict[str, Any] = {
        suite: {"environment": env, "settings": settings, "by_dtype": {}} for suite in args.suite
    }
    with tempfile.TemporaryDirectory(prefix="smartfed-step-cost-") as tmp:
        for dtype_name, dtype in dtypes.items():
            t0 = time.perf_counter()
            base, model_name = load_frozen_base(args.model, dtype, args.gradient_checkpointing)
            vocab = base.get_input_embeddings().num_embeddings
            ctx = Context(
                args=args,
                device=device,
                dtype=dtype,
                dtype_name=dtype_name,
                base=base,
                batch=random_batch(vocab, args, device),
                pools=PoolSet(Path(tmp), base, args.pool_rank),
            )
            console.print(
                f"[bold]{dtype_name}[/]: {model_name}, loaded in {time.perf_counter() - t0:.1f} s"
            )
            for suite in args.suite:
                t1 = time.perf_counter()
                result = SUITES[suite].run(ctx, probe)
                result.update(
                    model=model_name, tokens_per_step=ctx.tokens, seconds=time.perf_counter() - t1
                )
                results[suite]["by_dtype"][dtype_name] = result
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del ctx, base
            gc.collect()
    if args.json is not None:
        write_json(args.json, results)
        console.print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
