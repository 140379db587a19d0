"""``--suite routers``: SmartFed with every registered router design (``--routers``), dense
(K = M) and top-K (``--router_k``), as ratios to the frozen base and to PEFT LoRA of equal total
rank M."""

from __future__ import annotations

from typing import Any

from smartfed.models.memory_probe import MemoryProbe
from smartfed.tuners.routing import router_names
from stepcost.harness import (
    Context,
    Suite,
    base_variant,
    demo_pool,
    measure,
    method_variant,
    name_list,
    positive_int,
    register,
)


@register
class Routers(Suite):
    name = "routers"
    order = 1
    summary = "every router design, dense and top-K, against LoRA of rank M"
    references = ("base", "lora")

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--routers",
            type=name_list,
            default=None,
            help="router designs of the routers suite (default: all registered)",
        )
        parser.add_argument("--router_k", type=positive_int, default=8, help="routers suite: top-K")

    @classmethod
    def run(cls, ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
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
        records = measure(ctx, probe, "router designs", variants, cls.references)
        return {
            "pool": pool_note,
            "experts_per_matrix": total_rank,
            "top_k": k,
            "variants": records,
        }
