"""Step cost of MoRE vs PEFT LoRA vs the frozen base model, measured side by side in one run.

Run from the repository root (default: SmolLM2-135M-Instruct, batch 4 x 128 tokens, 5 repeats;
a few minutes on a 2-core CPU):

    .venv/bin/python benchmarks/step_cost.py
    .venv/bin/python benchmarks/step_cost.py --repeats 2 --batch_size 2 --seq_len 64   # quick
    .venv/bin/python benchmarks/step_cost.py --pool cn_chat,en_math --json step_cost.json

Variants, each one training step on the same random batch (causal-LM loss, labels = inputs):

  (a) base   all weights frozen; backward runs through the whole network down to the input
             embeddings (``inputs_embeds`` with ``requires_grad``): the activation-gradient cost
             every adapter method pays, with no weight gradients and no optimizer step.
  (b) lora   PEFT LoRA on the pool's matrices with rank = the pool's total rank per matrix
             (M_l = sum of pool ranks, e.g. 2 x 32 = 64) and the pool's alpha/r ratio; A and B
             trained with AdamW.
  (c) more   MoRE (smartfed) over the pool at the default K (``MoreConfig().top_k``); routers
             trained with AdamW.

Steps (b) and (c) are forward + backward + ``optimizer.step()`` + ``zero_grad()``. After the
warm-up steps the variants are interleaved (a, b, c, a, b, c, ...) so machine noise hits all of
them alike; the report gives median, min, max and IQR per variant, ratios of medians (plus
paired per-repeat ratios and ratios of minima, which resist steps slowed by other processes).

Without ``--pool`` the demo pool (cn_chat + en_math: rank 32, alpha 64, q_proj + v_proj) is
synthesized as two real PEFT adapters with random A and B (the step cost does not depend on the
weight values). Each variant gets its own model instance, since PEFT and MoRE edit models in place.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.table import Table

from smartfed.models import DEFAULT_MODEL, load_base_model
from smartfed.pool import LoraPool, load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

DEMO_POOL = ("cn_chat", "en_math")
DEMO_RANK = 32
DEMO_ALPHA = 64
DEMO_TARGETS = ["q_proj", "v_proj"]
LEARNING_RATE = 5e-4  # the paper's AdamW learning rate (DESIGN §1.5); irrelevant to the cost
SEED = 0

console = Console()
if not console.is_terminal:  # pipes and logs: rich would wrap at 80 columns
    console = Console(width=130)


@dataclass
class Variant:
    key: str
    label: str
    step: Callable[[], float]  # runs one step, returns the loss
    trainable_parameters: int
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time (all threads)
    losses: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one training step of the base model, PEFT LoRA and MoRE side by side."
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model name or path")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument(
        "--top_k", type=int, default=None, help="MoRE expert budget K (default: MoreConfig's)"
    )
    parser.add_argument(
        "--pool",
        default=None,
        help="comma-separated pool names or PEFT adapter folders "
        "(default: synthesize the demo pool's shapes with random weights)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results to FILE")
    args = parser.parse_args(argv)
    for name in ("batch_size", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


# ---------------------------------------------------------------------------------- setup
def synthesize_demo_pool(model_name: str, folder: Path) -> list[str]:
    """Save two random PEFT LoRA adapters with the demo pool's shapes; return their folders."""
    paths = []
    for i, name in enumerate(DEMO_POOL):
        torch.manual_seed(1000 + i)
        base = load_base_model(model_name).model
        config = LoraConfig(
            r=DEMO_RANK,
            lora_alpha=DEMO_ALPHA,
            target_modules=DEMO_TARGETS,
            lora_dropout=0.0,
            init_lora_weights=False,  # random A and B (B = 0 would make a degenerate pool)
        )
        peft_model = get_peft_model(base, config)
        path = folder / name
        peft_model.save_pretrained(str(path))
        paths.append(str(path))
        del peft_model, base
    gc.collect()
    return paths


def matching_lora_config(pool: LoraPool) -> tuple[LoraConfig, dict[str, Any]]:
    """A LoRA config with rank M_l (the pool's total rank) and the pool's alpha/r on its matrices.

    The alpha of each matrix keeps the scaling of the first pool module adapting it
    (alpha = scaling * M_l). Matrices whose rank or alpha differ from the most common one get a
    ``rank_pattern`` / ``alpha_pattern`` entry, so heterogeneous pools are matched exactly too.
    """
    names = pool.module_names()
    ranks, alphas = {}, {}
    for name in names:
        ranks[name] = pool.capacity(name)
        scaling = next(a.matrices[name].scaling for a in pool.adapters if name in a.matrices)
        alphas[name] = scaling * ranks[name]
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=names,  # full module names: exactly the pool's matrices
        lora_dropout=0.0,
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != rank},
        alpha_pattern={re.escape(n): a for n, a in alphas.items() if a != alpha},
    )
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    summary = {
        "rank": rank,
        "alpha": alpha,
        "targets": short,
        "matrices": len(names),
        "heterogeneous": bool(config.rank_pattern or config.alpha_pattern),
    }
    return config, summary


def make_variants(
    args: argparse.Namespace, pool: LoraPool, input_ids: torch.Tensor, mask: torch.Tensor
) -> tuple[list[Variant], dict[str, Any]]:
    facts: dict[str, Any] = {}

    # (a) frozen base model, backward down to the input embeddings.
    base = load_base_model(args.model).model
    base.train()
    embed = base.get_input_embeddings()

    def step_base() -> float:
        embeds = embed(input_ids).detach().requires_grad_()
        out = base(inputs_embeds=embeds, attention_mask=mask, labels=input_ids, use_cache=False)
        out.loss.backward()
        return float(out.loss.detach())

    # (b) PEFT LoRA with rank = pool total rank per matrix.
    torch.manual_seed(SEED + 1)
    lora_config, lora_facts = matching_lora_config(pool)
    lora_model = get_peft_model(load_base_model(args.model).model, lora_config)
    lora_model.train()
    lora_params = [p for p in lora_model.parameters() if p.requires_grad]
    lora_opt = torch.optim.AdamW(lora_params, lr=LEARNING_RATE)
    lora_trainable = sum(p.numel() for p in lora_params)

    def step_lora() -> float:
        out = lora_model(
            input_ids=input_ids, attention_mask=mask, labels=input_ids, use_cache=False
        )
        out.loss.backward()
        lora_opt.step()
        lora_opt.zero_grad()
        return float(out.loss.detach())

    # (c) MoRE over the pool, routers trained.
    torch.manual_seed(SEED + 2)
    more_config = MoreConfig() if args.top_k is None else MoreConfig(top_k=args.top_k)
    more = MoreModel(load_base_model(args.model).model, pool, more_config)
    more.train()
    router_params = [p for p in more.parameters() if p.requires_grad]
    more_opt = torch.optim.AdamW(router_params, lr=LEARNING_RATE)

    def step_more() -> float:
        out = more(input_ids=input_ids, attention_mask=mask, labels=input_ids, use_cache=False)
        out.loss.backward()
        more_opt.step()
        more_opt.zero_grad()
        return float(out.loss.detach())

    router_numel = sum(t.numel() for t in more.router_state_dict().values())
    capacities = more.capacities
    quotas = more.get_quotas()
    facts.update(
        lora=lora_facts,
        more={
            "top_k": more_config.top_k,
            "output_scale": more_config.output_scale,
            "matrices": len(more.matrix_names),
            "capacities": sorted({int(c) for c in capacities}),
            "quotas": sorted({int(q) for q in quotas}),
        },
        lora_trainable_parameters=lora_trainable,
        more_trainable_parameters=more.num_trainable_parameters(),
        router_numel=router_numel,
        router_bytes=router_numel * 4,
        lora_bytes=lora_trainable * 4,
        pool_parameters=pool.num_parameters,
        pool_module_parameters={a.name: a.num_parameters for a in pool.adapters},
    )
    variants = [
        Variant(
            "a",
            "base: frozen, act. grads to embeddings",
            step_base,
            0,
        ),
        Variant(
            "b",
            f"PEFT LoRA r={lora_facts['rank']}: A, B trained",
            step_lora,
            lora_trainable,
        ),
        Variant(
            "c",
            f"MoRE K={more_config.top_k} of M={','.join(map(str, facts['more']['capacities']))}"
            ": routers trained",
            step_more,
            facts["more_trainable_parameters"],
        ),
    ]
    return variants, facts


# ---------------------------------------------------------------------------------- timing
def run_interleaved(variants: list[Variant], warmup: int, repeats: int) -> None:
    for i in range(warmup):
        for v in variants:
            start = time.perf_counter()
            loss = v.step()
            console.print(
                f"  warm-up {i + 1}/{warmup} {v.key}: {time.perf_counter() - start:6.2f} s "
                f"(loss {loss:.3f})"
            )
    gc.collect()
    for i in range(repeats):
        row = []
        for v in variants:
            cpu_start, start = time.process_time(), time.perf_counter()
            loss = v.step()
            elapsed = time.perf_counter() - start
            v.times.append(elapsed)
            v.cpu_times.append(time.process_time() - cpu_start)
            v.losses.append(loss)
            row.append(f"{v.key} {elapsed:6.2f} s")
        console.print(f"  repeat {i + 1}/{repeats}: " + "   ".join(row))


def summarize(times: list[float]) -> dict[str, float]:
    out = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
    }
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        out.update(q1_s=q1, q3_s=q3)
    return out


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(SEED)
    tokens = args.batch_size * args.seq_len

    with tempfile.TemporaryDirectory(prefix="smartfed-step-cost-") as tmp:
        t0 = time.perf_counter()
        if args.pool is None:
            pool_items: str | list[str] = synthesize_demo_pool(args.model, Path(tmp))
            pool_note = (
                f"SYNTHETIC demo pool: {', '.join(DEMO_POOL)} shapes (PEFT LoRA r={DEMO_RANK}, "
                f"alpha={DEMO_ALPHA}, {'+'.join(DEMO_TARGETS)}) with random A and B weights"
            )
        else:
            pool_items = args.pool
            pool_note = f"pool from --pool {args.pool}"
        pool = load_pool(pool_items)
        loaded = load_base_model(args.model)
        vocab = loaded.model.get_input_embeddings().num_embeddings
        source = loaded.source.display_name
        del loaded
        generator = torch.Generator().manual_seed(SEED)
        input_ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=generator)
        mask = torch.ones_like(input_ids)
        variants, facts = make_variants(args, pool, input_ids, mask)
        setup_s = time.perf_counter() - t0

    console.rule("SmartFed step-cost benchmark")
    console.print(
        f"model: {source} | batch {args.batch_size} x seq {args.seq_len} = {tokens} tokens "
        f"(random ids, seed {SEED}, attention mask all ones) | float32"
    )
    console.print(
        f"torch {torch.__version__} | threads {torch.get_num_threads()} (intra-op, default) | "
        f"interop {torch.get_num_interop_threads()} | {platform.processor() or platform.machine()}"
    )
    console.print(f"pool: {pool_note}")
    console.print(
        f"      modules {', '.join(pool.names)}; {facts['more']['matrices']} matrices; "
        f"M_l = {facts['more']['capacities']} experts per matrix; "
        f"{pool.num_parameters:,} pool parameters"
    )
    console.print(
        "(a) base: all weights frozen, backward through the whole network to the input "
        "embeddings (activation gradients only, no weight gradients, no optimizer step) = the "
        "floor every adapter method pays"
    )
    console.print(
        f"(b) PEFT LoRA: rank {facts['lora']['rank']} = pool total rank per matrix, alpha "
        f"{facts['lora']['alpha']:g} (same alpha/r as the pool), on "
        f"{'+'.join(facts['lora']['targets'])}; AdamW on A and B"
    )
    console.print(
        f"(c) MoRE: K = {facts['more']['top_k']} (quotas {facts['more']['quotas']}), output scale "
        f"'{facts['more']['output_scale']}'; AdamW on routers; experts frozen"
    )
    console.print(
        "(b), (c): forward with labels + backward + optimizer.step + zero_grad; "
        f"warm-up {args.warmup}, then {args.repeats} interleaved repeats (a, b, c, a, b, c, ...)"
    )
    console.print(f"setup (pool synthesis + 4 model loads + injection): {setup_s:.1f} s")

    run_interleaved(variants, args.warmup, args.repeats)

    stats = {v.key: summarize(v.times) for v in variants}
    table = Table(title=f"one training step, {tokens} tokens ({args.repeats} repeats)")
    table.add_column("variant")
    table.add_column("median s", justify="right")
    table.add_column("min s", justify="right")
    table.add_column("max s", justify="right")
    table.add_column("IQR s", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("trainable params", justify="right")
    for v in variants:
        s = stats[v.key]
        iqr = f"{s['q3_s'] - s['q1_s']:.3f}" if "q1_s" in s else "-"
        table.add_row(
            f"({v.key}) {v.label}",
            f"{s['median_s']:.3f}",
            f"{s['min_s']:.3f}",
            f"{s['max_s']:.3f}",
            iqr,
            f"{tokens / s['median_s']:,.0f}",
            f"{v.trainable_parameters:,}",
        )
    console.print(table)

    med = {k: s["median_s"] for k, s in stats.items()}
    paired = {
        pair: statistics.median(
            x / y
            for x, y in zip(
                next(v for v in variants if v.key == pair[0]).times,
                next(v for v in variants if v.key == pair[2]).times,
                strict=True,
            )
        )
        for pair in ("b/a", "c/a", "c/b")
    }
    ratios = {pair: med[pair[0]] / med[pair[2]] for pair in ("b/a", "c/a", "c/b")}
    mins = {k: s["min_s"] for k, s in stats.items()}
    min_ratios = {pair: mins[pair[0]] / mins[pair[2]] for pair in ("b/a", "c/a", "c/b")}
    console.print(
        "ratios of medians:  "
        + "   ".join(f"{p} = {r:.3f}" for p, r in ratios.items())
        + "\n(median of per-repeat paired ratios: "
        + "   ".join(f"{p} = {r:.3f}" for p, r in paired.items())
        + ";  ratios of minima: "
        + "   ".join(f"{p} = {r:.3f}" for p, r in min_ratios.items())
        + ")"
    )
    noisy = [v.key for v in variants if stats[v.key]["max_s"] > 1.5 * stats[v.key]["min_s"]]
    if noisy:
        console.print(
            f"[bold yellow]warning:[/] max > 1.5 x min for variant(s) {', '.join(noisy)}: the "
            "machine was busy during some steps (another process?). Medians and minima are "
            "robust to a few such steps; rerun on an idle machine or raise --repeats to be sure."
        )
    console.print(
        f"overhead over the base floor: LoRA +{med['b'] - med['a']:.3f} s, "
        f"MoRE +{med['c'] - med['a']:.3f} s per step"
    )

    upload_ratio = facts["router_bytes"] / facts["lora_bytes"]
    console.print(
        f"per-round upload (float32): MoRE routers {facts['router_numel']:,} values = "
        f"{human_bytes(facts['router_bytes'])}  vs  LoRA (b) {facts['lora_trainable_parameters']:,}"
        f" values = {human_bytes(facts['lora_bytes'])}  -> routers/LoRA = {upload_ratio:.3f}"
    )
    console.print(
        f"pool total parameters (frozen, never sent): {facts['pool_parameters']:,} "
        f"({human_bytes(facts['pool_parameters'] * 4)} float32)"
    )
    smallest = min(facts["pool_module_parameters"].items(), key=lambda kv: kv[1])
    console.print(
        f"for reference: the smallest pool module alone ({smallest[0]}, a LoRA of the pool's own "
        f"rank) has {smallest[1]:,} values = {human_bytes(smallest[1] * 4)} -> routers/module = "
        f"{facts['router_numel'] / smallest[1]:.3f}"
    )
    rss = peak_rss_mib()
    console.print(
        f"peak RSS of this process: {rss:,.0f} MiB (3 model instances alive while timing: base, "
        "LoRA, MoRE; plus transient copies during setup; not a per-variant figure)"
    )

    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": source,
        "tokens_per_step": tokens,
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "pool": {"names": pool.names, "synthetic": args.pool is None, "note": pool_note},
        **facts,
        "variants": {
            v.key: {
                "label": v.label,
                "times_s": v.times,
                "cpu_times_s": v.cpu_times,
                "losses": v.losses,
                "trainable_parameters": v.trainable_parameters,
                **stats[v.key],
            }
            for v in variants
        },
        "ratios_of_medians": ratios,
        "ratios_of_minima": min_ratios,
        "paired_ratio_medians": paired,
        "router_to_lora_bytes": upload_ratio,
        "peak_rss_mib": rss,
        "setup_s": setup_s,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
