"""``--suite pool_size``: pools of ``--pool_sizes`` random modules of rank ``--pool_rank``: step
time, memory and router bytes per round as M grows, with a LoRA of rank M beside each."""

from __future__ import annotations

from typing import Any

from smartfed.models.memory_probe import MemoryProbe
from stepcost.harness import (
    POOL_ALPHA_PER_RANK,
    Context,
    Suite,
    base_variant,
    int_list,
    measure,
    method_variant,
    mib,
    positive_int,
    print_table,
    register,
)


@register
class PoolSize(Suite):
    name = "pool_size"
    order = 2
    summary = "growth with the pool's size M, LoRA of rank M beside"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--pool_sizes",
            type=int_list,
            default=[2, 8, 32],
            help="pool_size suite: modules per pool",
        )
        parser.add_argument(
            "--pool_k", type=positive_int, default=8, help="pool_size suite: SmartFed's K"
        )

    @classmethod
    def run(cls, ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
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
                    # The router its table names (and the results page's figures): 'linear',
                    # M x d_in values per matrix, not SmartFed's current default.
                    router="linear",
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
        print_table(
            f"growth with M (K={k}, router 'linear', {ctx.dtype_name})",
            ["modules", "M", "MoRE s", "x base", "peak MiB", "router values/matrix",
             "router MiB/round", "LoRA r=M s", "LoRA MiB/round"],
            [[str(g["modules"]), str(g["experts_per_matrix"]), f"{g['more_median_s']:.3f}",
              f"{g['more_time_vs_base_paired']:.3f}", mib(g["more_peak_bytes"]),
              f"{g['more_values_per_matrix']:,.0f}", mib(g["more_bytes_per_round_float32"]),
              f"{g['lora_median_s']:.3f}", mib(g["lora_bytes_per_round_float32"])]
             for g in growth],
        )  # fmt: skip
        return {"rank": rank, "top_k": k, "variants": records, "growth": growth}

    @classmethod
    def markdown(cls, run: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
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
        return header, rows, ""
