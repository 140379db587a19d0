"""The harness every step-cost suite shares: the frozen base and its shared-weight clones, the
pools of random modules, the variants (the frozen base's forward + backward; a method's local
step, which is :func:`smartfed.engine.training.training_step`), the interleaved timing with the
one memory probe (:mod:`smartfed.models.memory_probe`), the records, tables and the registry of
suites (:func:`register`).

A suite is a :class:`Suite` subclass in its own module of ``stepcost/suites/``, decorated with
:func:`register`: nothing else names it.
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from smartfed.assembly.config import gather
from smartfed.engine.training import training_step
from smartfed.methods import build_method
from smartfed.models import (
    autocast,
    enable_gradient_checkpointing,
    load_base_model,
    model_device,
    model_dtype,
)
from smartfed.models.memory_probe import MemoryProbe
from smartfed.pool import LoraPool, load_pool
from smartfed.testing import TINY, write_random_adapter

SEED = 0
POOL_ALPHA_PER_RANK = 2.0  # the paper's modules: rank 32, alpha 64
POOL_TARGETS = ("q_proj", "v_proj")  # the paper's: Query and Value
# SmolLM2-135M-Instruct's published config.json (no weights), for --model random: the same file
# `smartfed run --dry_run` reads, so both describe one architecture.
BENCHMARKS = Path(__file__).resolve().parents[1]
SMOLLM2_135M_CONFIG = BENCHMARKS / "model_configs" / "smollm2-135m-instruct"
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# ---------------------------------------------------------------------------------- models
def random_llama_config(spec: str) -> LlamaConfig | None:
    """The config of ``tiny``, ``random`` or ``random:HxL``; None for a model name or path."""
    if spec == "tiny":
        return LlamaConfig(**TINY)  # the tests' tiny LLaMA (smartfed.testing)
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
                    write_random_adapter(
                        path,
                        self.model,
                        rank=self.rank,
                        alpha=POOL_ALPHA_PER_RANK * self.rank,
                        targets=POOL_TARGETS,
                        seed=1000 + i,
                        b_std=0.02,
                    )
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
    batch, device, precision = ctx.batch, model_device(model), model_dtype(model)

    def step() -> float:  # train_local's own step
        return training_step(model, optimizer, batch, device, precision)

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


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A suite's own summary table on the console (numbers right-aligned)."""
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


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


def demo_pool(ctx: Context) -> tuple[str, LoraPool, str]:
    if ctx.args.pool is not None:
        return ctx.args.pool, load_pool(ctx.args.pool), f"--pool {ctx.args.pool}"
    lora_pool, pool = ctx.pools.get(2)
    rank = ctx.pools.rank
    return lora_pool, pool, f"2 random modules, rank {rank}, alpha {2 * rank:g}, q_proj + v_proj"


# ---------------------------------------------------------------------------------- suites
SUITE_CLASSES: dict[str, type[Suite]] = {}


def register(cls: type[Suite]) -> type[Suite]:
    """Class decorator: ``cls`` becomes ``--suite cls.name``."""
    if cls.name in SUITE_CLASSES:
        raise ValueError(f"step-cost suite {cls.name!r} is registered twice")
    SUITE_CLASSES[cls.name] = cls
    return cls


class Suite:
    """One suite: its name, its own flags, the run of one dtype and the markdown of its records.

    ``run`` returns the suite's JSON record of one dtype (at least ``variants``, the records of
    :func:`measure`); the harness adds the model, tokens per step and seconds."""

    name: ClassVar[str]
    order: ClassVar[int] = 100  # place in ``--suite all`` and the --help text
    summary: ClassVar[str] = ""  # one line for --help
    references: ClassVar[tuple[str, ...]] = ("base",)  # variants the others are compared to

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The suite's own flags (prefix them with the suite's name)."""

    @classmethod
    def run(cls, ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def markdown(cls, run: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
        """(header, rows, a closing line or "") of one dtype's run in a ``--json`` file; by
        default the variants with their ratios to :attr:`references`."""
        refs = list(cls.references)
        rows = [
            [r["label"], f"{r['median_s']:.3f}", f"{r['tokens_per_s']:,.0f}",
             *(paired_text(r, ref) for ref in refs), mib(r["peak_bytes"]),
             ratio(r.get("peak_vs_base")), f"{r['communicated_values']:,}"]
            for r in run["variants"].values()
        ]  # fmt: skip
        header = ["variant", "median s", "tokens/s", *(f"x {ref} (paired)" for ref in refs),
                  "peak MiB", "peak x base", "values sent/round"]  # fmt: skip
        return header, rows, ""


def paired_text(record: dict[str, Any], reference: str) -> str:
    return f"{record[f'time_vs_{reference}']:.2f} ({record[f'time_vs_{reference}_paired']:.2f})"
