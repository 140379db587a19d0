"""SmartFed's Flower ServerApp: rounds, central evaluation, checkpoints and the run directory."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from smartfed import __version__
from smartfed.data import partition_stats
from smartfed.errors import ConfigError
from smartfed.federation.config import RunConfig
from smartfed.federation.core import evaluate_loss
from smartfed.federation.rundir import RunDirectory, ServerState
from smartfed.federation.runtime import get_runtime
from smartfed.federation.settings import from_run_config
from smartfed.federation.strategy import SmartFedStrategy
from smartfed.telemetry import EnergyMeter

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, from_run_config(context.run_config))


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def run_server(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run (or continue) the federated rounds and write the run directory; return the summary."""
    run_dir = RunDirectory(config.output_dir)
    state = run_dir.latest_checkpoint()
    if state is not None and not config.resume:
        raise ConfigError(
            f"{run_dir.path} already holds a run (checkpoint of round {state.round}); continue "
            f"it with --resume {run_dir.path} or choose another --output_dir"
        )
    if state is not None and state.round >= config.num_rounds:
        log.info("run in %s is already complete (%d rounds)", run_dir.path, state.round)
    runtime = get_runtime(config)
    more = runtime.more
    run_dir.write_json("config.json", {**config.to_dict(), "smartfed_version": __version__})
    stats = partition_stats(
        runtime.partitions, runtime.train_examples, field=runtime.partition_field
    )
    run_dir.write_json("partitions.json", {"scheme": config.partition, "clients": stats})
    if state is None:
        sizes = [row["size"] for row in stats]
        log.info("partition %s: %d clients, sizes %s", config.partition, len(sizes), sizes)

    # Metrics rows past the last complete checkpoint belong to a round that did not finish.
    done = state.round if state else 0
    metrics_rows = [row for row in run_dir.read_metrics() if row.get("round", 0) <= done]
    run_dir.write_metrics(metrics_rows)
    totals = dict(state.totals) if state else {}
    routers = state.routers if state else runtime.initial_router_state
    strategy = SmartFedStrategy(
        num_clients=config.num_clients,
        sample_clients=config.sample_clients,
        min_replies=config.min_replies,
        capacities=runtime.capacities,
        top_k=config.topk_experts,
        k_min=config.k_min,
        enable_eeqa=config.enable_eeqa,
        eeqa_warmup_rounds=config.eeqa_warmup_rounds,
        ema_beta=config.ema_beta,
        seed=config.seed,
        round_offset=done,
        quotas=np.asarray(state.quotas) if state else None,
        ema_importance=np.asarray(state.ema_importance) if state and state.ema_importance else None,
    )
    meter = EnergyMeter(
        country_iso_code=config.energy_country, offset_kwh=float(totals.get("energy_kwh", 0.0))
    )
    meter.start()
    quotas_in_use = {done + 1: strategy.quotas.copy()}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        absolute = strategy.absolute_round(server_round)
        if server_round == 0:
            if done == 0 and config.eval_samples:
                more.load_router_state_dict(arrays.to_torch_state_dict())
                more.set_quotas(strategy.quotas)
                totals["initial_eval"] = evaluate_loss(more, runtime.eval_batches)
                log.info(
                    "round 0: eval loss %.4f", totals["initial_eval"].get("eval_loss", float("nan"))
                )
            return None
        report = strategy.reports[absolute]
        used = quotas_in_use.pop(absolute)
        quotas_in_use[absolute + 1] = strategy.quotas.copy()
        row: dict[str, Any] = {
            "round": absolute,
            "train_loss": report.train_loss,
            "bytes_down": report.bytes_down,
            "bytes_up": report.bytes_up,
            "sampled_clients": report.sampled,
            "dropped_clients": {str(k): v for k, v in report.dropped.items()},
            "step_time_s": report.step_time_s,
            "quotas": [int(q) for q in used],
            "next_quotas": [int(q) for q in strategy.quotas],
            "importance": None
            if strategy.ema_importance is None
            else [float(v) for v in strategy.ema_importance],
            "client_importance": report.client_importance,
        }
        evaluated = config.eval_samples and (
            absolute % config.eval_every == 0 or absolute == config.num_rounds
        )
        if evaluated:
            more.load_router_state_dict(arrays.to_torch_state_dict())
            more.set_quotas(used)
            row.update(evaluate_loss(more, runtime.eval_batches))
        row["energy_kwh"] = meter.cumulative_kwh()
        row["wall_s"] = time.time() - report.started
        for key in ("bytes_down", "bytes_up", "wall_s"):
            totals[key] = totals.get(key, 0) + row[key]
        totals["energy_kwh"] = row["energy_kwh"] or 0.0
        totals["last_quotas"] = row["quotas"]
        state_now = ServerState(
            round=absolute,
            routers=arrays.to_torch_state_dict(),
            quotas=[int(q) for q in strategy.quotas],
            ema_importance=row["importance"],
            totals=totals,
            rng=ServerState.capture_rng(),
        )
        # Order matters for crash safety: metrics first, then the checkpoint that makes them
        # official (a resume drops metrics rows newer than the last checkpoint).
        metrics_rows.append(row)
        run_dir.write_metrics(metrics_rows)
        run_dir.save_checkpoint(state_now)
        _print_round(row, config.num_rounds)
        return MetricRecord({k: v for k, v in row.items() if k in ("eval_loss", "eval_ppl")})

    remaining = config.num_rounds - done
    final_routers = routers
    try:
        if remaining > 0:
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(routers),
                num_rounds=remaining,
                train_config=ConfigRecord({}),
                evaluate_fn=evaluate,
            )
            final_routers = result.arrays.to_torch_state_dict() if result.arrays else routers
    finally:
        # Also on a failed round: CodeCarbon's timers would otherwise outlive the run.
        energy_total = meter.stop()

    more.load_router_state_dict(final_routers)
    last_quotas = totals.get("last_quotas") or [int(q) for q in strategy.quotas]
    more.set_quotas(last_quotas)
    more.save_pretrained(run_dir.final)
    summary = _summary(runtime, run_dir, metrics_rows, totals, energy_total, meter.method)
    run_dir.write_json("summary.json", summary)
    return summary


def _print_round(row: dict[str, Any], num_rounds: int) -> None:
    parts = [
        f"round {row['round']}/{num_rounds}",
        f"loss {row['train_loss']:.4f}",
    ]
    if "eval_loss" in row:
        parts.append(f"eval {row['eval_loss']:.4f}")
    parts += [
        f"down {_mib(row['bytes_down'])}",
        f"up {_mib(row['bytes_up'])}",
        f"{row['wall_s']:.1f} s",
        f"K {min(row['quotas'])}-{max(row['quotas'])}",
    ]
    if row["dropped_clients"]:
        parts.append(f"dropped {len(row['dropped_clients'])}")
    print(" | ".join(parts), flush=True)


def _summary(runtime, run_dir, rows, totals, energy_total, energy_method) -> dict[str, Any]:
    evaluated = [r for r in rows if "eval_loss" in r]
    router_params = runtime.more.num_trainable_parameters()
    lora_equivalent = runtime.pool.num_parameters
    return {
        "rounds": len(rows),
        "bytes_down": int(totals.get("bytes_down", 0)),
        "bytes_up": int(totals.get("bytes_up", 0)),
        "wall_s": float(totals.get("wall_s", 0.0)),
        "energy_kwh": energy_total if energy_total is not None else totals.get("energy_kwh"),
        "energy_method": energy_method,
        "initial_eval": totals.get("initial_eval"),
        "final_eval": {k: evaluated[-1][k] for k in ("round", "eval_loss", "eval_ppl")}
        if evaluated
        else None,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "trainable_router_parameters": router_params,
        "router_bytes_float32": router_params * 4,
        "lora_equivalent_parameters": lora_equivalent,
        "pool": runtime.pool.names,
        "pool_fingerprint": runtime.pool.fingerprint(),
        "model": runtime.model_source.display_name,
        "final_dir": str(run_dir.final),
    }
