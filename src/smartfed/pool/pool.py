"""A pool of LoRA adapters, split along the rank into frozen rank-1 experts (docs/design.md §1.1).

For an adapted matrix ℓ, adapter n contributes ``r_n`` experts ``E_i(x) = s_n B[:, i] A[i, :] x``.
The scaling ``s_n`` is folded into the B column here, once, so the MoRE layer never needs it.
Experts are ordered by pool position, then by rank index; ``expert_owners`` keeps that map so
diagnostics can say which pool module an expert came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from smartfed.errors import PoolError
from smartfed.pool.adapter import LoraAdapter, load_lora_adapter
from smartfed.pool.hub import fetch_hub_module
from smartfed.pool.pinning import verified_source
from smartfed.pool.registry import PoolEntry, PoolRegistry


@dataclass(frozen=True)
class MatrixExperts:
    """All rank-1 experts of one adapted matrix, stacked."""

    module_name: str
    expert_A: torch.Tensor  # (M, d_in): rows A[i, :]
    expert_B: torch.Tensor  # (d_out, M): columns s_n · B[:, i]
    owners: tuple[tuple[str, int], ...]  # expert j -> (pool module name, rank index)

    @property
    def num_experts(self) -> int:
        return int(self.expert_A.shape[0])


class LoraPool:
    """An ordered, named collection of loaded LoRA adapters."""

    def __init__(self, adapters: list[LoraAdapter]):
        if not adapters:
            raise PoolError("the LoRA pool is empty: name at least one pool module")
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise PoolError(f"the LoRA pool names a module twice: {', '.join(names)}")
        self.adapters = adapters

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    def module_names(self) -> list[str]:
        """Every base-model matrix adapted by at least one pool module, in model-name order."""
        return sorted({name for a in self.adapters for name in a.matrices}, key=_natural_key)

    def experts(self, module_name: str) -> MatrixExperts:
        rows_a, cols_b, owners = [], [], []
        for adapter in self.adapters:
            mat = adapter.matrices.get(module_name)
            if mat is None:
                continue
            rows_a.append(mat.lora_A)
            cols_b.append(mat.lora_B * mat.scaling)
            owners.extend((adapter.name, i) for i in range(mat.rank))
        if not rows_a:
            raise PoolError(f"no pool module adapts '{module_name}'")
        return MatrixExperts(
            module_name, torch.cat(rows_a, dim=0), torch.cat(cols_b, dim=1), tuple(owners)
        )

    def capacity(self, module_name: str) -> int:
        """M_ℓ: the number of experts available for one matrix (Σ of the pool ranks there)."""
        return sum(a.matrices[module_name].rank for a in self.adapters if module_name in a.matrices)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for adapter in self.adapters:
            digest.update(f"{adapter.name}:{adapter.fingerprint()};".encode())
        return digest.hexdigest()

    def validate_against(self, model: nn.Module) -> None:
        for adapter in self.adapters:
            adapter.validate_against(model)

    @property
    def num_parameters(self) -> int:
        return sum(a.num_parameters for a in self.adapters)


def _natural_key(name: str) -> list:
    # "layers.10" sorts after "layers.9", so matrices are listed in depth order.
    return [int(part) if part.isdigit() else part for part in name.split(".")]


def _check_against_entry(adapter: LoraAdapter, entry: PoolEntry) -> None:
    where = f"pool module '{entry.name}' (manifest {entry.manifest})"
    if entry.rank not in adapter.ranks:
        raise PoolError(
            f"{where} records rank {entry.rank}, but the adapter has ranks {adapter.ranks}"
        )
    if sorted(entry.target_modules) != adapter.target_modules:
        raise PoolError(
            f"{where} records target_modules {sorted(entry.target_modules)}, but the adapter "
            f"adapts {adapter.target_modules}"
        )


def resolve_pool_item(
    item: str, registry: PoolRegistry, *, verify_pins: bool = True
) -> tuple[str, str, PoolEntry | None]:
    """Map one pool item (a registry name, a local folder or a hub id) to (name, source, entry).

    A registered module's files must match the digests its manifest pins
    (:mod:`smartfed.pool.pinning`); a hub module is fetched at its pinned commit, or pinned at
    its first download. ``verify_pins=False`` is for inspecting one (a hub module: its ``main``,
    what ``smartfed pool lock`` would pin)."""
    if item in registry.entries:
        entry = registry.entries[item]
        if not entry.is_available():
            raise PoolError(
                f"pool module '{item}' is registered in {entry.manifest} but its adapter is "
                f"missing: expected a PEFT adapter folder at {entry.resolved_source()} "
                f"(recipe: {entry.recipe.get('how', 'unknown')})"
            )
        if verify_pins:
            return item, verified_source(entry), entry
        if entry.is_hub:
            return item, str(fetch_hub_module(entry, None)[0]), entry
        return item, entry.resolved_source(), entry
    path = Path(item).expanduser()
    if path.exists():
        return path.resolve().name, str(path), None
    if "/" in item and not item.startswith((".", "/", "~")) and item.count("/") == 1:
        return item.replace("/", "__"), item, None  # hub id: PEFT fetches it when online
    registry.get(item)  # raises the "unknown name, known names are ..." error
    raise AssertionError("unreachable")


def load_pool_module(
    item: str, registry: PoolRegistry, *, verify_pins: bool = True
) -> tuple[LoraAdapter, PoolEntry | None]:
    """Resolve one pool item, load its adapter and check it against its manifest record."""
    name, source, entry = resolve_pool_item(item, registry, verify_pins=verify_pins)
    adapter = load_lora_adapter(source, name=name)
    if entry is not None:
        _check_against_entry(adapter, entry)
    return adapter, entry


def load_pool(items: str | list[str], registry: PoolRegistry | None = None) -> LoraPool:
    """Load a pool from a comma-separated string or a list of names / folders / hub ids."""
    if isinstance(items, str):
        items = [part.strip() for part in items.split(",") if part.strip()]
    registry = registry or PoolRegistry.default()
    return LoraPool([load_pool_module(item, registry)[0] for item in items])
