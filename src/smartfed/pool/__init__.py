"""The LoRA pool: PEFT adapters loaded, validated and split into rank-1 experts."""

from smartfed.pool.adapter import LoraAdapter, LoraMatrix, load_lora_adapter
from smartfed.pool.pool import (
    LoraPool,
    MatrixExperts,
    load_pool,
    load_pool_module,
    resolve_pool_item,
)
from smartfed.pool.registry import PoolEntry, PoolRegistry, add_manifest_entry

__all__ = [
    "LoraAdapter",
    "LoraMatrix",
    "LoraPool",
    "MatrixExperts",
    "PoolEntry",
    "PoolRegistry",
    "add_manifest_entry",
    "load_lora_adapter",
    "load_pool",
    "load_pool_module",
    "resolve_pool_item",
]
