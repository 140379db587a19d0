"""What a run needs, worked out before anything heavy loads (``smartfed run --dry_run``).

The base model is built from its config on PyTorch's meta device (shapes, no storage: no
weights are read), the pool modules are read (they are small LoRA adapters), and the method is
built on them exactly as a run builds it. Parameter counts, the exchanged tensors' shapes, the
round config and the adapted matrices then come from the real method code, and
:mod:`smartfed.models.memory` turns them into a memory estimate. The CLI adds the bytes per
round (:mod:`smartfed.federation.payload`, above this layer).

A pool made for another base model (its matrices do not fit this one) is assumed to have the
same modules, ranks, alphas and target matrices, shaped to this model's matrices
(:func:`pool_shaped_for`); the plan says so in its notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError, PoolError
from smartfed.methods import build_method
from smartfed.models.memory import AdaptedMatrix, DecoderShape, MemoryEstimate, estimate_memory
from smartfed.models.meta import load_model_config, meta_base_model
from smartfed.pool import LoraPool, PoolRegistry, load_pool
from smartfed.pool.adapter import LoraAdapter, LoraMatrix
from smartfed.tuners.experts import ExpertLinear
from smartfed.tuners.routing import RoutedLinear


@dataclass
class DryRunPlan:
    """Counts, exchanged shapes and the memory estimate of one run's configuration."""

    config: RunConfig
    model_type: str
    shape: DecoderShape
    base_parameters: int
    trainable_parameters: int
    pool_expert_parameters: int
    communicated_shapes: dict[str, tuple[int, ...]]
    round_config: dict[str, Any]
    reply_metric_sizes: dict[str, int]
    trains: bool
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    @property
    def communicated_parameters(self) -> int:
        return sum(_numel(shape) for shape in self.communicated_shapes.values())


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def pool_shaped_for(pool: LoraPool, model: nn.Module) -> LoraPool:
    """``pool``'s modules with their ranks, alphas and target matrices (by short name, e.g.
    ``q_proj``), on every such linear layer of ``model``, as empty meta tensors of its shapes."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    adapters = []
    for adapter in pool.adapters:
        by_target: dict[str, LoraMatrix] = {}
        for matrix in adapter.matrices.values():
            by_target.setdefault(matrix.module_name.rsplit(".", 1)[-1], matrix)
        matrices = {}
        for name, linear in linears.items():
            reference = by_target.get(name.rsplit(".", 1)[-1])
            if reference is None:
                continue
            rank = reference.rank
            matrices[name] = LoraMatrix(
                name,
                torch.empty(rank, linear.in_features, device="meta"),
                torch.empty(linear.out_features, rank, device="meta"),
                reference.alpha,
                reference.scaling,
            )
        if not matrices:
            raise PoolError(
                f"pool module '{adapter.name}' adapts {', '.join(adapter.target_modules)}, which "
                "this base model has no linear layer of"
            )
        adapters.append(
            LoraAdapter(
                name=adapter.name,
                source=adapter.source,
                base_model_name=adapter.base_model_name,
                use_rslora=adapter.use_rslora,
                matrices=matrices,
            )
        )
    return LoraPool(adapters)


def adapted_matrices(model: nn.Module) -> list[AdaptedMatrix]:
    """What each adapted matrix of ``model`` keeps for backward, per token (approximate for
    everything but the dense MoRE layer, which ``benchmarks/memory_check.py`` measures)."""
    adapted = []
    for name, module in model.named_modules():
        if isinstance(module, RoutedLinear):
            # MoRE and MoLE: the router's input; probabilities over the choices; top-k values,
            # their sum and indices; the expert projections A·x and their gates (--dtype).
            k, choices = module.k, module.num_choices
            sparse = k < choices
            adapted.append(
                AdaptedMatrix(
                    name=name,
                    in_features=module.in_features,
                    keeps_input=True,
                    dtype_values=2 * module.num_experts,
                    float32_values=choices
                    + (k + 1 if sparse else 0)
                    + getattr(module, "residual_rank", 0),
                    int64_values=k if sparse else 0,
                )
            )
        elif isinstance(module, ExpertLinear):
            # Weighted experts (LoRAHub): the projections A·x, for the weights' gradient.
            adapted.append(
                AdaptedMatrix(name, module.in_features, False, dtype_values=module.num_experts)
            )
        elif isinstance(module, LoraLayer) and module.r:
            # A PEFT LoRA: its input if A trains; A·x (float32) for B's gradient.
            adapter = next(iter(module.r))
            a_trains = module.lora_A[adapter].weight.requires_grad
            b_trains = module.lora_B[adapter].weight.requires_grad
            adapted.append(
                AdaptedMatrix(
                    name=name,
                    in_features=module.in_features,
                    keeps_input=a_trains,
                    float32_values=module.r[adapter] if b_trains else 0,
                )
            )
    return adapted


def _decoder_shape(model_config: Any, name: str) -> DecoderShape:
    try:
        return DecoderShape.from_config(model_config)
    except (AttributeError, TypeError) as exc:
        raise ConfigError(
            f"--model_name_or_path {name}: the memory estimate models LLaMA-style decoders, and "
            f"this config ({getattr(model_config, 'model_type', '?')}) lacks {exc}"
        ) from None


def plan_run(config: RunConfig) -> DryRunPlan:
    """The dry run of ``config``: reads the model's config and the pool modules, no weights."""
    model_config = load_model_config(config.model_name_or_path)
    shape = _decoder_shape(model_config, config.model_name_or_path)
    base = meta_base_model(model_config, config.dtype)
    base_parameters = sum(p.numel() for p in base.parameters())
    base_buffers = {id(b) for b in base.buffers()}
    notes = []
    pool = load_pool(config.pool_items, PoolRegistry.default(config.pool_manifest))
    try:
        pool.validate_against(base)
    except PoolError:
        pool = pool_shaped_for(pool, base)
        notes.append(
            f"the pool modules ({', '.join(pool.names)}) were made for another base model: "
            "assumed the same ranks, alphas and targets, shaped to this model's matrices"
        )
    method = build_method(config, base, pool)
    trainable = method.trainable_parameters()
    shapes = {n: tuple(p.shape) for n, p in trainable.items() if method.is_communicated(n)}
    # What the method adds next to the base and does not train: the pool's frozen experts.
    expert_values = sum(
        b.numel()
        for b in method.model.buffers()
        if id(b) not in base_buffers and b.is_floating_point() and b.dtype != torch.float64
    )
    trainable_count = sum(p.numel() for p in trainable.values())
    notes.append(
        f"activations for full {config.batch_size} x {config.max_seq_len} batches (rows are "
        "padded to the longest, at most --max_seq_len): an upper bound"
    )
    if config.dtype != "float32":
        notes.append(f"{config.dtype}: the forward pass runs under torch.autocast")
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        notes.append(
            "on the CPU, glibc's heap can add about 30% to the activations in resident memory "
            "(MALLOC_MMAP_THRESHOLD_=65536 removes it; benchmarks/results/memory_check.json)"
        )
    memory = estimate_memory(
        shape,
        dtype=config.dtype,
        batch_size=config.batch_size,
        seq_len=config.max_seq_len,
        base_parameters=base_parameters,
        trainable_parameters=trainable_count,
        pool_expert_parameters=expert_values,
        adapted=adapted_matrices(method.model),
        gradient_checkpointing=config.gradient_checkpointing,
        load_in_4bit=config.load_in_4bit,
    )
    notes.extend(memory.notes)
    return DryRunPlan(
        config=config,
        model_type=str(getattr(model_config, "model_type", "?")),
        shape=shape,
        base_parameters=base_parameters,
        trainable_parameters=trainable_count,
        pool_expert_parameters=expert_values,
        communicated_shapes=shapes,
        round_config=method.server_logic(config).round_config() if method.trains else {},
        reply_metric_sizes=method.reply_metric_sizes(),
        trains=method.trains,
        memory=memory,
        notes=notes,
    )
