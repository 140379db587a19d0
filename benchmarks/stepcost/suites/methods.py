"""``--suite methods``: the frozen base and one local step of each method (``--methods``) in
each dtype: tokens/s and peak memory, as ratios to the frozen base's forward + backward."""

from __future__ import annotations

from typing import Any

from smartfed.assembly.config import method_settings_index
from smartfed.methods.smartfed import DEFAULT_TOP_K
from smartfed.models.memory_probe import MemoryProbe
from stepcost.harness import (
    Context,
    Suite,
    base_variant,
    demo_pool,
    measure,
    method_variant,
    name_list,
    register,
)


@register
class Methods(Suite):
    name = "methods"
    order = 0
    summary = "the frozen base and one local step of each method"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--methods",
            type=name_list,
            default=["fedit", "smartfed", "mole"],
            help="methods of the methods suite",
        )

    @classmethod
    def run(cls, ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
        lora_pool, pool, pool_note = demo_pool(ctx)
        variants = [base_variant(ctx)]
        # The default K (32) on a small pool is refused (above every matrix's M): cap it at the
        # largest M, which selects the same experts, for the methods that have a K.
        largest = max(pool.capacity(name) for name in pool.module_names())
        with_k = method_settings_index().get("topk_experts", [])
        for method in ctx.args.methods:
            settings = {"topk_experts": min(DEFAULT_TOP_K, largest)} if method in with_k else {}
            variants.append(
                method_variant(ctx, method, method, method, lora_pool, pool, **settings)
            )
        records = measure(ctx, probe, cls.name, variants)
        return {"pool": pool_note, "variants": records}
