"""Helpers shared by the module-wise baselines (MoLE here, LoRAHub in ``smartfed.tuners.lorahub``).

Both treat a whole pool module (all its rank-1 experts at one matrix) as the unit of choice, so
both need the pool's rank-1 experts of a matrix grouped by owner module, the MoRE-style
``target_modules`` filter, and a fingerprint-checked save / load of their small trainable state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import LoraPool
from smartfed.utils.io import atomic_path, write_json_atomic


@dataclass(frozen=True)
class ModuleGroups:
    """The rank-1 experts of one matrix, each tagged with the pool module that owns it.

    Summing expert columns j of one module n gives back that module's full update:
    ``Σ_{j: owner(j)=n} expert_B[:, j] expert_A[j] = s_n B_n A_n``.
    """

    matrix_name: str
    expert_A: torch.Tensor  # (M, d_in)
    expert_B: torch.Tensor  # (d_out, M), LoRA scaling folded in
    modules: tuple[str, ...]  # the N_ℓ pool modules adapting this matrix, in pool order
    pool_index: tuple[int, ...]  # position of each of those modules in the pool (0..N-1)
    expert_module: torch.Tensor  # (M,) long: local module index (0..N_ℓ-1) of expert j

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    @property
    def num_experts(self) -> int:
        return int(self.expert_A.shape[0])

    @property
    def expert_pool_index(self) -> torch.Tensor:
        """(M,) long: pool position (0..N-1) of the module owning expert j."""
        return torch.tensor(self.pool_index, dtype=torch.long)[self.expert_module]

    def ranks(self) -> tuple[int, ...]:
        """Rank of each local module at this matrix."""
        counts = torch.bincount(self.expert_module, minlength=self.num_modules)
        return tuple(int(c) for c in counts)


def group_experts_by_module(pool: LoraPool, matrix_name: str) -> ModuleGroups:
    """Stack the pool's experts of ``matrix_name`` (as ``pool.experts``) and tag their owners."""
    experts = pool.experts(matrix_name)
    position = {name: i for i, name in enumerate(pool.names)}
    local: dict[str, int] = {}  # insertion order = pool order, since experts are pool-ordered
    expert_module = [local.setdefault(owner, len(local)) for owner, _ in experts.owners]
    return ModuleGroups(
        matrix_name=matrix_name,
        expert_A=experts.expert_A,
        expert_B=experts.expert_B,
        modules=tuple(local),
        pool_index=tuple(position[name] for name in local),
        expert_module=torch.tensor(expert_module, dtype=torch.long),
    )


def select_matrices(pool: LoraPool, target_modules: list[str] | None) -> list[str]:
    """The pool-adapted matrices to wrap, restricted to ``target_modules`` short names if given."""
    names = pool.module_names()
    if target_modules is None:
        return names
    wanted = set(target_modules)
    names = [n for n in names if n.rsplit(".", 1)[-1] in wanted]
    if not names:
        raise ConfigError(
            f"target_modules {sorted(wanted)} match no matrix adapted by the pool "
            f"({', '.join(pool.names)})"
        )
    return names


def pool_record(pool: LoraPool) -> dict[str, Any]:
    return {
        "fingerprint": pool.fingerprint(),
        "modules": [{"name": a.name, "source": a.source} for a in pool.adapters],
    }


def save_state(
    directory: str | Path,
    *,
    weights_name: str,
    config_name: str,
    state: dict[str, torch.Tensor],
    pool: LoraPool,
    record: dict[str, Any],
) -> Path:
    """Write ``state`` (safetensors, pool fingerprint in its metadata) and ``record`` (json)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / weights_name) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(tmp),
            metadata={"format": "pt", "pool_fingerprint": pool.fingerprint()},
        )
    write_json_atomic(directory / config_name, {**record, "pool": pool_record(pool)})
    return directory


def load_state(
    directory: str | Path,
    *,
    weights_name: str,
    config_name: str,
    pool: LoraPool,
    what: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by ``save_state``; refuse it unless it was made for ``pool``."""
    directory = Path(directory)
    config_path = directory / config_name
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoolError(f"no {config_name} in {directory}: not a SmartFed {what} folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolError(f"cannot read {config_path}: {exc}") from None
    recorded_pool = saved.get("pool", {})
    if recorded_pool.get("fingerprint") != pool.fingerprint():
        recorded = ", ".join(m["name"] for m in recorded_pool.get("modules", []))
        raise PoolError(
            f"{config_path}: {what} was trained on pool [{recorded}] "
            f"(fingerprint {str(recorded_pool.get('fingerprint'))[:12]}), but the given pool "
            f"[{', '.join(pool.names)}] has fingerprint {pool.fingerprint()[:12]}: "
            "load it with the same pool modules"
        )
    weights = directory / weights_name
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error type
        raise PoolError(f"cannot read {what} weights {weights}: {exc}") from None
    return saved, state
