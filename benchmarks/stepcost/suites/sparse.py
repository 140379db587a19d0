"""``--suite sparse``: MoRE's dense expert path vs its sparse path (only the K selected columns
of B) at K of ``--sparse_k`` over pools of ``--sparse_pools`` modules: does K < M save compute on
this machine?"""

from __future__ import annotations

from typing import Any

from smartfed.models.memory_probe import MemoryProbe
from stepcost.harness import (
    Context,
    Suite,
    base_variant,
    console,
    int_list,
    measure,
    method_variant,
    mib,
    paired_ratio,
    print_table,
    register,
)


@register
class Sparse(Suite):
    name = "sparse"
    order = 3
    summary = "MoRE's dense vs sparse expert path at K < M"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument(
            "--sparse_pools",
            type=int_list,
            default=[2, 32],
            help="sparse suite: modules per pool (M = modules x rank)",
        )
        parser.add_argument(
            "--sparse_k", type=int_list, default=[2, 8], help="sparse suite: K values"
        )

    @classmethod
    def run(cls, ctx: Context, probe: MemoryProbe) -> dict[str, Any]:
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
        print_table(
            f"sparse vs dense expert path ({ctx.dtype_name}); < 1: sparse is faster",
            ["M", "K", "dense s", "sparse s", "sparse/dense (paired)", "dense x base",
             "sparse x base", "dense step MiB", "sparse step MiB"],
            [[str(c["experts_per_matrix"]), str(c["top_k"]), f"{c['dense_median_s']:.3f}",
              f"{c['sparse_median_s']:.3f}", f"{c['sparse_vs_dense_paired']:.3f}",
              f"{c['dense_vs_base_paired']:.3f}", f"{c['sparse_vs_base_paired']:.3f}",
              mib(c["dense_step_peak_bytes"]), mib(c["sparse_step_peak_bytes"])]
             for c in comparison],
        )  # fmt: skip
        wins = [c for c in comparison if c["sparse_vs_dense_paired"] < 0.95]
        verdict = (
            "sparse path faster by > 5 % at "
            + ", ".join(f"M={c['experts_per_matrix']} K={c['top_k']}" for c in wins)
            if wins
            else "the sparse path is nowhere faster by > 5 %: K < M saves no step time here"
        )
        console.print(f"verdict: {verdict}")
        return {"rank": rank, "variants": records, "comparison": comparison, "verdict": verdict}

    @classmethod
    def markdown(cls, run: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
        rows = [
            [str(c["experts_per_matrix"]), str(c["top_k"]), f"{c['dense_median_s']:.3f}",
             f"{c['sparse_median_s']:.3f}", f"{c['sparse_vs_dense_paired']:.3f}",
             f"{c['dense_vs_base_paired']:.2f}", f"{c['sparse_vs_base_paired']:.2f}"]
            for c in run["comparison"]
        ]  # fmt: skip
        header = ["M", "K", "dense s", "sparse s", "sparse/dense (paired)",
                  "dense x base", "sparse x base"]  # fmt: skip
        return header, rows, f"Verdict: {run['verdict']}.\n"
