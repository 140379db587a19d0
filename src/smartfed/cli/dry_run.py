"""``smartfed run --dry_run``: what a run will need, printed before anything heavy loads.

Parameter counts, the memory one client needs (:mod:`smartfed.models.memory`), and the bytes
each round sends (:mod:`smartfed.federation.payload`), for the run's model, method, pool,
``--dtype``, ``--batch_size``, ``--max_seq_len`` and ``--gradient_checkpointing``. No weights
and no data are read: the method is built on an empty (meta) model
(:mod:`smartfed.assembly.dryrun`).
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from smartfed.assembly.dryrun import DryRunPlan, plan_run
from smartfed.engine.config import RunConfig
from smartfed.federation.payload import RoundBytes, round_bytes
from smartfed.models.memory import format_bytes


def plan_round_bytes(plan: DryRunPlan) -> RoundBytes | None:
    """Bytes of one round of ``plan``'s run; None for a method that has no rounds."""
    if not plan.trains:
        return None
    config = plan.config
    return round_bytes(
        plan.communicated_shapes,
        wire_dtype=config.wire_dtype,
        sample_clients=config.sample_clients,
        round_config=plan.round_config,
        reply_metric_sizes=plan.reply_metric_sizes,
    )


def _count(value: int) -> str:
    return f"{value:,}"


def _bytes(value: int) -> str:
    return f"{format_bytes(value)} ({value:,} B)"


def render(plan: DryRunPlan, traffic: RoundBytes | None) -> Table:
    config, shape, memory = plan.config, plan.shape, plan.memory
    kv = f" ({shape.num_kv_heads} KV)" if shape.num_kv_heads != shape.num_heads else ""
    table = Table(
        title=f"smartfed run --dry_run: {config.method} on {config.model_name_or_path}",
        caption=(
            f"{plan.model_type}: hidden {shape.hidden_size}, {shape.num_layers} layers, "
            f"{shape.num_heads} heads{kv} of {shape.head_dim}, MLP {shape.intermediate_size}, "
            f"vocab {shape.vocab_size:,}{', tied embeddings' if shape.tied_embeddings else ''}"
        ),
        show_header=False,
        box=box.SIMPLE,
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("detail")
    table.add_row("[b]parameters[/b]", "", "")
    table.add_row("base model", _count(plan.base_parameters), f"frozen, {config.dtype}")
    table.add_row("pool experts", _count(plan.pool_expert_parameters), f"frozen, {config.dtype}")
    table.add_row("trained", _count(plan.trainable_parameters), "float32, per client")
    table.add_row(
        "sent each way",
        _count(plan.communicated_parameters),
        f"{len(plan.communicated_shapes)} tensors, per client",
    )
    activations = memory.activations
    checkpointing = ", gradient checkpointing" if config.gradient_checkpointing else ""
    table.add_row(
        "[b]memory per client[/b]",
        "",
        f"batch {config.batch_size} x {config.max_seq_len}, {config.dtype}{checkpointing}",
    )
    weights = "NF4 + " + config.dtype if config.load_in_4bit else config.dtype
    table.add_row("weights", format_bytes(memory.weights), weights)
    table.add_row("pool experts", format_bytes(memory.pool_experts), config.dtype)
    table.add_row("trained parameters", format_bytes(memory.trainable), "float32")
    table.add_row("gradients", format_bytes(memory.gradients), "float32")
    table.add_row("optimizer", format_bytes(memory.optimizer), "AdamW: two float32 moments")
    table.add_row("activations (peak)", format_bytes(activations.total), "forward + backward")
    table.add_row(
        "  decoder layers",
        format_bytes(activations.layers + activations.recomputed_layer),
        "inputs kept, one layer recomputed"
        if config.gradient_checkpointing
        else "norms, attention, MLP",
    )
    table.add_row("  adapters", format_bytes(activations.adapters), "routers, gates, LoRA inputs")
    table.add_row(
        "  loss", format_bytes(activations.loss), f"log-softmax of {shape.vocab_size:,} logits"
    )
    table.add_row("[b]total[/b]", f"[b]{format_bytes(memory.total)}[/b]", "")
    if traffic is None:
        table.add_row("[b]bytes per round[/b]", "0", f"{config.method} has no rounds")
    else:
        table.add_row(
            "[b]bytes per round[/b]",
            "",
            f"{config.sample_clients} clients, wire {config.wire_dtype}",
        )
        table.add_row("down", _bytes(traffic.down), "state + round config, to each")
        table.add_row("up", _bytes(traffic.up), "update + metrics, from each")
        table.add_row(
            f"{config.num_rounds} rounds",
            format_bytes(traffic.total * config.num_rounds),
            "down + up",
        )
    return table


def print_dry_run(config: RunConfig, console: Console | None = None) -> DryRunPlan:
    """Plan ``config``'s run and print it; returns the plan."""
    plan = plan_run(config)
    console = console or Console(highlight=False)
    console.print(render(plan, plan_round_bytes(plan)))
    for note in plan.notes:
        console.print(f"note: {note}", soft_wrap=True)
    return plan
