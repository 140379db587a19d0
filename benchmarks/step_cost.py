"""Cost of one local training step: SmartFed's methods, router designs, pool sizes and expert
paths, each measured side by side against the frozen base model in one run.

Run from the repository root; ``--help`` lists every option. Suites (``--suite``, comma-separated,
or ``all``):

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

    .venv/bin/python benchmarks/step_cost.py                          # methods suite, default model
    .venv/bin/python benchmarks/step_cost.py --suite all --repeats 3 --batch_size 2 --seq_len 64
    .venv/bin/python benchmarks/step_cost.py --model random --device cuda --suite all  # no file
    .venv/bin/python benchmarks/step_cost.py --model tiny --suite all --repeats 1      # seconds

Models (``--model``): a name or path as ``smartfed run`` takes it (default: SmolLM2-135M-Instruct);
``random`` builds a LlamaForCausalLM of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads,
3 KV heads, MLP 1536, vocab 49,152, tied embeddings) with random weights and no file, so a
machine without the model file or network measures the same shapes; ``random:HxL`` the same
layout at hidden H and L layers (head dim 64, 3:1 grouped KV heads where the heads divide by 3,
MLP 8H/3); ``tiny`` the tests' 2-layer, hidden-32 LLaMA. Step cost does not depend on weight
values, so random weights give the real model's cost.

How a step is measured:

- Every variant gets its own model instance whose frozen base weights are *shared* with the
  others (a deep copy that keeps the frozen tensors), so ten variants cost one base model of
  memory. Methods are built by the real registry (``smartfed.methods.build_method`` with a
  RunConfig resolved like ``smartfed run``'s) and moved to the device (the shared base weights
  are already there, so their initial draws differ from a CPU build's: cost does not depend on
  them); SmartFed's importance tracking is on, as in local training.
- A method's step is ``train_local``'s: the batch (random ids, all tokens real, labels = inputs)
  under ``smartfed.models.autocast`` for a half-precision base, forward with labels, zero_grad,
  backward, AdamW step. The **base** variant runs the frozen model's forward with labels and a
  backward down to the input embeddings (``inputs_embeds`` with ``requires_grad``): the
  activation-gradient cost every adapter method pays, with no weight gradient and no optimizer.
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
import copy
import datetime
import gc
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from smartfed.assembly.config import gather, method_settings_index
from smartfed.methods import build_method
from smartfed.methods.smartfed import DEFAULT_TOP_K
from smartfed.models import (
    DEFAULT_MODEL,
    autocast,
    enable_gradient_checkpointing,
    load_base_model,
    resolve_device,
    to_device,
    torch_dtype,
)
from smartfed.models.memory_probe import MemoryProbe, memory_probe
from smartfed.pool import LoraPool, load_pool
from smartfed.tuners.routing import router_names

SUITES = ("methods", "routers", "pool_size", "sparse")
JSON_FORMAT = "step_cost/2"
SEED = 0
POOL_ALPHA_PER_RANK = 2.0  # the paper's modules: rank 32, alpha 64
POOL_TARGETS = ("q_proj", "v_proj")  # the paper's: Query and Value
# SmolLM2-135M-Instruct's published config.json (no weights), for --model random: the same file
# `smartfed run --dry_run` reads, so both describe one architecture.
SMOLLM2_135M_CONFIG = Path(__file__).resolve().parent / "model_configs" / "smollm2-135m-instruct"
# The tests' tiny LLaMA (tests/conftest.py), for --model tiny.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=272,
    max_position_embeddings=256,
)
NOISE_FACTOR = 1.5  # max > 1.5 x min: some step was slowed by something else
MIB = 1024 * 1024

console = Console()
if not console.is_terminal:  # pipes and logs: rich would wrap at 80 columns
    console = Console(width=150)


# ---------------------------------------------------------------------------------- arguments
def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one local training step of SmartFed's methods, router designs, pool "
        "sizes and expert paths against the frozen base model.",
    )
    parser.add_argument(
        "--suite",
        type=name_list,
        default=["methods"],
        help=f"comma-separated suites: {', '.join(SUITES)}, or all",
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
        "--methods",
        type=name_list,
        default=["fedit", "smartfed", "mole"],
        help="methods of the methods suite",
    )
    parser.add_argument(
        "--pool",
        default=None,
        help="methods/routers suites: pool modules as `smartfed run` takes them "
        "(default: the demo pool's shapes, 2 x rank 32 on q/v, random weights)",
    )
    parser.add_argument(
        "--routers",
        type=name_list,
        default=None,
        help="router designs of the routers suite (default: all registered)",
    )
    parser.add_argument("--router_k", type=int, default=8, help="routers suite: top-K")
    parser.add_argument(
        "--pool_sizes", type=int_list, default=[2, 8, 32], help="pool_size suite: modules per pool"
    )
    parser.add_argument("--pool_rank", type=int, default=32, help="rank of synthesized modules")
    parser.add_argument("--pool_k", type=int, default=8, help="pool_size suite: SmartFed's K")
    parser.add_argument(
        "--sparse_pools",
        type=int_list,
        default=[2, 32],
        help="sparse suite: modules per pool (M = modules x rank)",
    )
    parser.add_argument("--sparse_k", type=int_list, default=[2, 8], help="sparse suite: K values")
    parser.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    args = parser.parse_args(argv)
    if args.suite == ["all"]:
        args.suite = list(SUITES)
    unknown = sorted(set(args.suite) - set(SUITES))
    if unknown:
        parser.error(f"--suite: unknown {', '.join(unknown)}; expected {', '.join(SUITES)} or all")
    for name in ("batch_size", "seq_len", "repeats", "router_k", "pool_rank", "pool_k"):
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


# ---------------------------------------------------------------------------------- models
def random_llama_config(spec: str) -> LlamaConfig | None:
    """The config of ``tiny``, ``random`` or ``random:HxL``; None for a model name or path."""
    if spec == "tiny":
        return LlamaConfig(**TINY)
    smollm2 = LlamaConfig.from_pretrained(SMOLLM2_135M_CONFIG)
    if spec == "random":
        return smollm2
    match = re.fullmatch(r"random:(\d+)x(\d+)", spec)
    if match is None:
        return None
    hidden, layers = int(match.group(1)), int(match.group(2))
    if hidden < 64 or hidden % 64:
        raise SystemExit(f"--model {spec}: hidden size must be a multiple of 64 (head dim 64)")
    heads = hidden // 64
    return LlamaConfig(
        **{
            **smollm2.to_dict(),
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads // 3 if heads % 3 == 0 else heads,
            "intermediate_size": -(-hidden * 8 // 3 // 64) * 64,
        }
    )


def load_frozen_base(spec: str, dtype: torch.dtype, checkpointing: bool) -> tuple[nn.Module, str]:
    """The frozen base model on the CPU in ``dtype`` (the first variant moves its shared weights
    to the device)."""
    config = random_llama_config(spec)
    if config is None:
        loaded = load_base_model(spec, dtype=dtype)
        model, name = loaded.model, loaded.source.display_name
    else:
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).to(dtype)
        layers, hidden = config.num_hidden_layers, config.hidden_size
        name = f"{spec} (random LlamaForCausalLM, {layers} layers, hidden {hidden})"
    model.requires_grad_(False)
    model.eval()
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model, name


def clone_frozen(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its (frozen) parameters and buffers: every variant
    edits its own module tree in place (PEFT, MoRE) while one copy of the weights serves all."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


# ---------------------------------------------------------------------------------- pools
def write_random_adapter(
    folder: Path, model: nn.Module, rank: int, targets: Iterable[str], seed: int
) -> Path:
    """A real PEFT adapter folder (adapter_config.json + adapter_model.safetensors, PEFT's key
    names) of rank ``rank`` on ``targets`` with random A and B; no model wrap, no device."""
    targets = tuple(targets)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            key = f"base_model.model.{name}"
            shape_a, shape_b = (rank, module.in_features), (module.out_features, rank)
            weights[f"{key}.lora_A.weight"] = torch.randn(shape_a, generator=generator) * 0.02
            weights[f"{key}.lora_B.weight"] = torch.randn(shape_b, generator=generator) * 0.02
    config = LoraConfig(
        r=rank,
        lora_alpha=POOL_ALPHA_PER_RANK * rank,
        target_modules=list(targets),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


@dataclass
class PoolSet:
    """Pools of synthesized random modules, made once per size and shared by every suite."""

    folder: Path
    model: nn.Module
    rank: int
    made: dict[int, tuple[str, LoraPool]] = field(default_factory=dict)

    def get(self, modules: int) -> tuple[str, LoraPool]:
        """(the ``--lora_pool`` value, the loaded pool) of ``modules`` random modules."""
        if modules not in self.made:
            paths = []
            for i in range(modules):
                path = self.folder / f"r{self.rank}_m{i}"
                if not path.exists():
                    write_random_adapter(path, self.model, self.rank, POOL_TARGETS, 1000 + i)
                paths.append(str(path))
            self.made[modules] = (",".join(paths), load_pool(paths))
        return self.made[modules]


# ---------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    key: str
    label: str
    step: Callable[[], float]  # one training step; returns the loss
    facts: dict[str, Any]  # trainable parameters, bytes per round, static bytes, settings
    state: Callable[[], list[torch.Tensor]]  # the tensors the variant holds (static memory)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    step_peak_bytes: int | None = None


@dataclass
class Context:
    """What every variant of one dtype shares."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    dtype_name: str
    base: nn.Module  # frozen, on the CPU until the first variant moves the shared weights
    batch: dict[str, torch.Tensor]  # on the device
    pools: PoolSet

    @property
    def tokens(self) -> int:
        return int(self.batch["attention_mask"].sum())

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages among ``tensors`` (tied weights count once)."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def base_variant(ctx: Context) -> Variant:
    """The frozen base: forward with labels, backward to the input embeddings, no optimizer."""
    model = clone_frozen(ctx.base).to(ctx.device)
    model.train()
    embed = model.get_input_embeddings()
    batch = ctx.batch

    def step() -> float:
        with ctx.autocast():
            embeds = embed(batch["input_ids"]).detach().requires_grad_()
            out = model(
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            )
        out.loss.backward()
        return float(out.loss.detach())

    def state() -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    facts = {"kind": "base", "trainable_parameters": 0, "communicated_values": 0}
    return Variant("base", "frozen base: forward + backward to the embeddings", step, facts, state)


def method_variant(
    ctx: Context, key: str, label: str, method: str, lora_pool: str, pool: LoraPool, **settings
) -> Variant:
    """One local training step of ``method`` built by the registry, as ``train_local`` runs it."""
    overrides = {
        "method": method,
        "model_name_or_path": ctx.args.model,
        "lora_pool": lora_pool,
        "dtype": ctx.dtype_name,
        "device": str(ctx.device),
        "batch_size": ctx.args.batch_size,
        "max_seq_len": ctx.args.seq_len,
        **settings,
    }
    config = gather(overrides=overrides).config_for()
    torch.manual_seed(SEED)  # router init / fresh LoRA from one seed: same draws per variant
    fed = build_method(config, clone_frozen(ctx.base), pool)
    fed.model.to(ctx.device)  # as the runtime's place_method
    model = fed.model
    params = list(fed.trainable_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=config.settings.learning_rate)
    model.train()
    fed.start_local_training()  # SmartFed: importance tracking on, as in local training
    batch = ctx.batch

    def step() -> float:
        with ctx.autocast():
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def state() -> list[torch.Tensor]:
        moments = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
        return [*model.parameters(), *model.buffers(), *moments]

    communicated = sum(t.numel() for t in fed.global_state().values())
    facts = {
        "kind": "method",
        "method": method,
        "settings": dict(settings),
        "resolved_settings": config.settings.to_dict(),
        "trainable_parameters": sum(p.numel() for p in params),
        "communicated_values": communicated,
        "bytes_per_round_float32": communicated * 4,
        "pool_modules": len(pool.names),
        "pool_parameters": pool.num_parameters,
    }
    if hasattr(model, "capacities"):  # MoRE: experts per matrix and the quotas used
        facts["experts_per_matrix"] = sorted({int(c) for c in model.capacities})
        facts["quotas"] = sorted({int(q) for q in model.get_quotas()})
        facts["matrices"] = len(model.matrix_names)
        facts["values_per_matrix"] = communicated / len(model.matrix_names)
    return Variant(key, label, step, facts, state)


# ---------------------------------------------------------------------------------- timing
def run_group(variants: list[Variant], ctx: Context, probe: MemoryProbe) -> None:
    """Warm-up, one memory step each, then interleaved timed repeats."""
    args = ctx.args
    for i in range(args.warmup):
        for v in variants:
            start = time.perf_counter()
            loss = v.step()
            synchronize(ctx.device)
            console.print(
                f"  warm-up {i + 1}/{args.warmup} {v.key}: {time.perf_counter() - start:7.3f} s "
                f"(loss {loss:.3f})"
            )
    for v in variants:
        measured = probe.measure(v.step)
        v.step_peak_bytes = None if measured is None else measured.growth
        v.facts["static_bytes"] = unique_bytes(v.state())
    gc.collect()
    for i in range(args.repeats):
        row = []
        for v in variants:
            synchronize(ctx.device)
            cpu_start, start = time.process_time(), time.perf_counter()
            loss = v.step()
            synchronize(ctx.device)
            elapsed = time.perf_counter() - start
            v.times.append(elapsed)
            v.cpu_times.append(time.process_time() - cpu_start)
            v.losses.append(loss)
            row.append(f"{v.key} {elapsed:.3f}")
        console.print(f"  repeat {i + 1}/{args.repeats}: " + "  ".join(row))


def summarize(times: list[float]) -> dict[str, float]:
    out = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        out["iqr_s"] = q3 - q1
    return out


def paired_ratio(numerator: Variant, denominator: Variant) -> float:
    """Median over repeats of the per-repeat ratio (same round of the interleave)."""
    return statistics.median(a / b for a, b in zip(numerator.times, denominator.times, strict=True))


def variant_record(v: Variant, ctx: Context, references: dict[str, Variant]) -> dict[str, Any]:
    """JSON record of one measured variant, with its ratios to each reference variant."""
    stats = summarize(v.times)
    peak = None if v.step_peak_bytes is None else v.facts["static_bytes"] + v.step_peak_bytes
    record: dict[str, Any] = {
        "label": v.label,
        **v.facts,
        **stats,
        "tokens_per_s": ctx.tokens / stats["median_s"],
        "step_peak_bytes": v.step_peak_bytes,
        "peak_bytes": peak,
        "times_s": v.times,
        "cpu_times_s": v.cpu_times,
        "losses": v.losses,
        "noisy": stats["max_s"] > NOISE_FACTOR * stats["min_s"],
    }
    for name, ref in references.items():
        ref_median = statistics.median(ref.times)
        record[f"time_vs_{name}"] = stats["median_s"] / ref_median
        record[f"time_vs_{name}_paired"] = paired_ratio(v, ref)
        ref_peak = (
            None if ref.step_peak_bytes is None else ref.facts["static_bytes"] + ref.step_peak_bytes
        )
        record[f"peak_vs_{name}"] = None if peak is None or not ref_peak else peak / ref_peak
    return record


# ---------------------------------------------------------------------------------- reporting
def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.1f}"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_group(title: str, records: dict[str, dict[str, Any]], references: list[str]) -> None:
    table = Table(title=title)
    for column in ("variant", "median s", "min s", "IQR s", "tokens/s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for ref in references:
        table.add_column(f"x {ref} (paired)", justify="right")
    for column in ("step peak MiB", "peak MiB", "peak x base", "trainable", "bytes/round"):
        table.add_column(column, justify="right")
    for r in records.values():
        iqr = r.get("iqr_s")
        cells = [
            f"{r['label']}{' [noisy]' if r['noisy'] else ''}",
            f"{r['median_s']:.3f}",
            f"{r['min_s']:.3f}",
            "-" if iqr is None else f"{iqr:.3f}",
            f"{r['tokens_per_s']:,.0f}",
        ]
        for ref in references:
            cells.append(f"{r[f'time_vs_{ref}']:.3f} ({r[f'time_vs_{ref}_paired']:.3f})")
        cells += [
            mib(r["step_peak_bytes"]),
            mib(r["peak_bytes"]),
            ratio(r.get("peak_vs_base")),
            f"{r['trainable_parameters']:,}",
            f"{r['communicated_values'] * 4:,}",
        ]
        table.add_row(*cells)
    console.print(table)
    noisy = [k for k, r in records.items() if r["noisy"]]
    if noisy:
        console.print(
            f"[yellow]noisy:[/] max > {NOISE_FACTOR} x min for {', '.join(noisy)} (another "
            "process?); the paired ratios and minima resist a few slow steps"
        )


def measure(
    ctx: Context,
    probe: MemoryProbe,
    title: str,
    variants: list[Variant],
    references: tuple[str, ...] = ("base",),
) -> dict[str, dict[str, Any]]:
    """Run one interleaved group, print its table, return its records by variant key."""
    console.rule(f"{title} [{ctx.dtype_name}]")
    run_group(variants, ctx, probe)
    by_key = {v.key: v for v in variants}
    refs = {name: by_key[name] for name in references}
    records = {v.key: variant_record(v, ctx, refs) for v in variants}
    print_group(
        f"{title}: one step, {ctx.tokens} tokens, {ctx.dtype_name}, "
        f"{len(variants[0].times)} repeats; ratio of medians (median paired ratio)",
        records,
        list(references),
    )
    return records


# ---------------------------------------------------------------------------------- suites
def demo_pool(ctx: Context) -> tuple[str, LoraPool, str]:
    if ctx.args.pool is not None:
        return ctx.args.pool, load_pool(ctx.args.pool), f"--pool {ctx.args.pool}"
    lora_pool, pool = ctx.pools.get(2)
    rank = ctx.pools.rank
    return lora_pool, pool, f"2 random modules, rank {rank}, alpha {2 * rank:g}, q_proj + v_proj"


def suite_methods(ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
    lora_pool, pool, pool_note = demo_pool(ctx)
    variants = [base_variant(ctx)]
    # The default K (32) on a small pool is refused (above every matrix's M): cap it at the
    # largest M, which selects the same experts, for the methods that have a K.
    largest = max(pool.capacity(name) for name in pool.module_names())
    with_k = method_settings_index().get("topk_experts", [])
    for method in ctx.args.methods:
        settings = {"topk_experts": min(DEFAULT_TOP_K, largest)} if method in with_k else {}
        variants.append(method_variant(ctx, method, method, method, lora_pool, pool, **settings))
    records = measure(ctx, probe, "methods", variants)
    return {"pool": pool_note, "variants": records}


def suite_routers(ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
    lora_pool, pool, pool_note = demo_pool(ctx)
    total_rank = max(pool.capacity(name) for name in pool.module_names())
    k = min(ctx.args.router_k, total_rank)
    scaling = next(iter(pool.adapters[0].matrices.values())).scaling
    variants = [
        base_variant(ctx),
        method_variant(
            ctx,
            "lora",
            f"PEFT LoRA r={total_rank} (= M)",
            "fedit",
            lora_pool,
            pool,
            lora_rank=total_rank,
            lora_alpha=scaling * total_rank,
        ),
    ]
    designs = ctx.args.routers or router_names()
    for design in designs:
        variants.append(
            method_variant(
                ctx,
                f"{design}/dense",
                f"{design}, dense K=M={total_rank}",
                "smartfed",
                lora_pool,
                pool,
                router=design,
                dense=True,
            )
        )
        variants.append(
            method_variant(
                ctx,
                f"{design}/top{k}",
                f"{design}, top-K={k}",
                "smartfed",
                lora_pool,
                pool,
                router=design,
                topk_experts=k,
                enable_eeqa=False,
            )
        )
    records = measure(ctx, probe, "router designs", variants, ("base", "lora"))
    return {"pool": pool_note, "experts_per_matrix": total_rank, "top_k": k, "variants": records}


def suite_pool_size(ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
    rank, k = ctx.pools.rank, ctx.args.pool_k
    variants = [base_variant(ctx)]
    for modules in ctx.args.pool_sizes:
        lora_pool, pool = ctx.pools.get(modules)
        m = modules * rank
        variants.append(
            method_variant(
                ctx,
                f"more/M{m}",
                f"SmartFed, {modules} modules, M={m}, K={min(k, m)}",
                "smartfed",
                lora_pool,
                pool,
                topk_experts=min(k, m),
                enable_eeqa=False,
            )
        )
        variants.append(
            method_variant(
                ctx,
                f"lora/r{m}",
                f"PEFT LoRA r={m} (= M)",
                "fedit",
                lora_pool,
                pool,
                lora_rank=m,
                lora_alpha=POOL_ALPHA_PER_RANK * m,
            )
        )
    records = measure(ctx, probe, "pool size", variants)
    growth = [
        {
            "modules": modules,
            "experts_per_matrix": modules * rank,
            **{
                f"more_{name}": records[f"more/M{modules * rank}"][name]
                for name in (
                    "median_s",
                    "time_vs_base_paired",
                    "peak_bytes",
                    "step_peak_bytes",
                    "bytes_per_round_float32",
                    "values_per_matrix",
                    "static_bytes",
                )
            },
            "lora_median_s": records[f"lora/r{modules * rank}"]["median_s"],
            "lora_bytes_per_round_float32": records[f"lora/r{modules * rank}"][
                "bytes_per_round_float32"
            ],
        }
        for modules in ctx.args.pool_sizes
    ]
    table = Table(title=f"growth with M (K={k}, router 'linear', {ctx.dtype_name})")
    for column in (
        "modules",
        "M",
        "MoRE s",
        "x base",
        "peak MiB",
        "router values/matrix",
        "router MiB/round",
        "LoRA r=M s",
        "LoRA MiB/round",
    ):
        table.add_column(column, justify="right")
    for g in growth:
        table.add_row(
            str(g["modules"]),
            str(g["experts_per_matrix"]),
            f"{g['more_median_s']:.3f}",
            f"{g['more_time_vs_base_paired']:.3f}",
            mib(g["more_peak_bytes"]),
            f"{g['more_values_per_matrix']:,.0f}",
            mib(g["more_bytes_per_round_float32"]),
            f"{g['lora_median_s']:.3f}",
            mib(g["lora_bytes_per_round_float32"]),
        )
    console.print(table)
    return {"rank": rank, "top_k": k, "variants": records, "growth": growth}


def suite_sparse(ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
    rank = ctx.pools.rank
    variants = [base_variant(ctx)]
    cases = []
    for modules in ctx.args.sparse_pools:
        lora_pool, pool = ctx.pools.get(modules)
        m = modules * rank
        for k in ctx.args.sparse_k:
            if k >= m:
                continue  # K = M selects every expert: the sparse path falls back to dense
            cases.append((m, k))
            for path in ("dense", "sparse"):
                variants.append(
                    method_variant(
                        ctx,
                        f"M{m}/K{k}/{path}",
                        f"SmartFed M={m} K={k}, {path} path",
                        "smartfed",
                        lora_pool,
                        pool,
                        topk_experts=k,
                        enable_eeqa=False,
                        expert_path=path,
                    )
                )
    records = measure(ctx, probe, "expert path", variants)
    by_key = {v.key: v for v in variants}
    comparison = []
    for m, k in cases:
        dense, sparse = by_key[f"M{m}/K{k}/dense"], by_key[f"M{m}/K{k}/sparse"]
        dense_r, sparse_r = records[dense.key], records[sparse.key]
        comparison.append(
            {
                "experts_per_matrix": m,
                "top_k": k,
                "dense_median_s": dense_r["median_s"],
                "sparse_median_s": sparse_r["median_s"],
                "sparse_vs_dense_paired": paired_ratio(sparse, dense),
                "dense_vs_base_paired": dense_r["time_vs_base_paired"],
                "sparse_vs_base_paired": sparse_r["time_vs_base_paired"],
                "dense_step_peak_bytes": dense_r["step_peak_bytes"],
                "sparse_step_peak_bytes": sparse_r["step_peak_bytes"],
            }
        )
    table = Table(title=f"sparse vs dense expert path ({ctx.dtype_name}); < 1: sparse is faster")
    for column in (
        "M",
        "K",
        "dense s",
        "sparse s",
        "sparse/dense (paired)",
        "dense x base",
        "sparse x base",
        "dense step MiB",
        "sparse step MiB",
    ):
        table.add_column(column, justify="right")
    for c in comparison:
        table.add_row(
            str(c["experts_per_matrix"]),
            str(c["top_k"]),
            f"{c['dense_median_s']:.3f}",
            f"{c['sparse_median_s']:.3f}",
            f"{c['sparse_vs_dense_paired']:.3f}",
            f"{c['dense_vs_base_paired']:.3f}",
            f"{c['sparse_vs_base_paired']:.3f}",
            mib(c["dense_step_peak_bytes"]),
            mib(c["sparse_step_peak_bytes"]),
        )
    console.print(table)
    wins = [c for c in comparison if c["sparse_vs_dense_paired"] < 0.95]
    verdict = (
        "sparse path faster by > 5 % at "
        + ", ".join(f"M={c['experts_per_matrix']} K={c['top_k']}" for c in wins)
        if wins
        else "the sparse path is nowhere faster by > 5 %: K < M saves no step time here"
    )
    console.print(f"verdict: {verdict}")
    return {"rank": rank, "variants": records, "comparison": comparison, "verdict": verdict}


SUITE_FUNCTIONS: dict[str, Callable[[Context, MemoryProbe], dict[str, Any]]] = {
    "methods": suite_methods,
    "routers": suite_routers,
    "pool_size": suite_pool_size,
    "sparse": suite_sparse,
}


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


def _paired(record: dict[str, Any], reference: str) -> str:
    return f"{record[f'time_vs_{reference}']:.2f} ({record[f'time_vs_{reference}_paired']:.2f})"


def markdown_report(data: dict[str, Any]) -> str:
    """The tables of a ``--json`` file as markdown (``--markdown FILE``): what the results
    pages quote, so they can be regenerated rather than retyped."""
    parts = []
    for name, suite in data["suites"].items():
        env = suite["environment"]
        where = env.get("gpu") or f"{env['cpu']}, {env['num_threads']} threads"
        parts.append(f"### {name} ({where}, torch {env['torch']}, {env['date'][:10]})\n")
        parts.append(f"`{env['command']}`\n")
        for dtype, run in suite["by_dtype"].items():
            tokens = run["tokens_per_step"]
            records = run["variants"]
            if name == "pool_size":
                rows = [
                    [str(g["modules"]), str(g["experts_per_matrix"]), f"{g['more_median_s']:.3f}",
                     f"{g['more_time_vs_base_paired']:.2f}", mib(g["more_peak_bytes"]),
                     f"{g['more_values_per_matrix']:,.0f}",
                     mib(g["more_bytes_per_round_float32"]), f"{g['lora_median_s']:.3f}",
                     mib(g["lora_bytes_per_round_float32"])]
                    for g in run["growth"]
                ]  # fmt: skip
                header = ["modules", "M", "SmartFed s", "x base (paired)", "peak MiB",
                          "router values/matrix", "router MiB/round", "LoRA r=M s",
                          "LoRA MiB/round"]  # fmt: skip
            elif name == "sparse":
                rows = [
                    [str(c["experts_per_matrix"]), str(c["top_k"]), f"{c['dense_median_s']:.3f}",
                     f"{c['sparse_median_s']:.3f}", f"{c['sparse_vs_dense_paired']:.3f}",
                     f"{c['dense_vs_base_paired']:.2f}", f"{c['sparse_vs_base_paired']:.2f}"]
                    for c in run["comparison"]
                ]  # fmt: skip
                header = ["M", "K", "dense s", "sparse s", "sparse/dense (paired)",
                          "dense x base", "sparse x base"]  # fmt: skip
            else:
                refs = ["base", "lora"] if name == "routers" else ["base"]
                rows = [
                    [r["label"], f"{r['median_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
                     *(_paired(r, ref) for ref in refs), mib(r["peak_bytes"]),
                     ratio(r.get("peak_vs_base")), f"{r['communicated_values']:,}"]
                    for r in records.values()
                ]  # fmt: skip
                header = ["variant", "median s", "tokens/s",
                          *(f"x {ref} (paired)" for ref in refs), "peak MiB", "peak x base",
                          "values sent/round"]  # fmt: skip
            parts.append(f"{dtype}, {tokens} tokens per step:\n")
            parts.append(_md_table(header, rows) + "\n")
            if name == "sparse":
                parts.append(f"Verdict: {run['verdict']}.\n")
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
                result = SUITE_FUNCTIONS[suite](ctx, probe)
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
