"""SmartFed's Flower ServerApp: rounds, central evaluation, checkpoints and the run directory.

The same app runs every method (:mod:`smartfed.methods`); what is averaged, what the server
adds to FedAvg and how the final model is saved are the method's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from smartfed import __version__
from smartfed.assembly.runtime import get_runtime
from smartfed.data import partition_stats
from smartfed.engine.config import RunConfig
from smartfed.engine.evaluation import evaluate_loss
from smartfed.engine.rundir import RunDirectory, ServerState
from smartfed.errors import ConfigError
from smartfed.federation.settings import from_run_config
from smartfed.federation.strategy import SmartFedStrategy
from smartfed.telemetry import EnergyMeter
from smartfed.utils.io import write_dir_atomic

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
    method = runtime.method
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
    global_state = state.global_state if state else runtime.initial_global_state
    logic = method.server_logic(config)
    if state:
        logic.load_state_dict(state.server_logic)

    def is_eval_round(absolute: int) -> bool:
        return bool(config.eval_samples) and (
            absolute % config.eval_every == 0 or absolute == config.num_rounds
        )

    strategy = SmartFedStrategy(
        num_clients=config.num_clients,
        sample_clients=config.sample_clients,
        min_replies=config.min_replies,
        server_logic=logic,
        seed=config.seed,
        round_offset=done,
        client_eval_rounds=is_eval_round if method.evaluates_on_clients else None,
    )
    meter = EnergyMeter(
        country_iso_code=config.energy_country, offset_kwh=float(totals.get("energy_kwh", 0.0))
    )
    meter.start()

    if done == 0 and config.eval_samples and "initial_eval" not in totals:
        method.load_global_state(global_state)
        method.load_local_state(runtime.initial_local_state)  # a cached runtime's may be stale
        method.apply_round_config(logic.round_config())
        totals["initial_eval"] = _eval_row(evaluate_loss(method.model, runtime.eval_batches))
        log.info("round 0: eval loss %.4f", totals["initial_eval"].get("eval_loss", float("nan")))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None  # evaluated above, once, also when resuming
        absolute = strategy.absolute_round(server_round)
        report = strategy.reports[absolute]
        row: dict[str, Any] = {
            "round": absolute,
            "train_loss": report.train_loss,
            "bytes_down": report.bytes_down,
            "bytes_up": report.bytes_up,
            "sampled_clients": report.sampled,
            "dropped_clients": {str(k): v for k, v in report.dropped.items()},
            "step_time_s": report.step_time_s,
            **logic.round_fields(report.round_config),
        }
        evaluated = is_eval_round(absolute)
        if evaluated and method.evaluates_on_clients:
            row.update(_eval_row(report.client_eval or {}))
            row["bytes_eval"] = report.bytes_eval  # evaluation traffic, not in bytes_up/down
        elif evaluated:
            method.load_global_state(arrays.to_torch_state_dict())
            method.apply_round_config(report.round_config)
            row.update(_eval_row(evaluate_loss(method.model, runtime.eval_batches)))
        row["energy_kwh"] = meter.cumulative_kwh()
        row["wall_s"] = time.time() - report.started
        for key in ("bytes_down", "bytes_up", "wall_s"):
            totals[key] = totals.get(key, 0) + row[key]
        if row["energy_kwh"] is None:  # unmeasured is not 0 kWh: the whole run's total is unknown
            totals["energy_unavailable"] = True
        else:
            totals["energy_kwh"] = row["energy_kwh"]
        totals["last_round_config"] = report.round_config
        state_now = ServerState(
            round=absolute,
            global_state=arrays.to_torch_state_dict(),
            server_logic=logic.state_dict(),
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

    # A method that does not train (static merging) has no rounds and sends nothing.
    remaining = config.num_rounds - done if method.trains else 0
    final_state = global_state
    try:
        if remaining > 0:
            result = strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(global_state),
                num_rounds=remaining,
                train_config=ConfigRecord({}),
                evaluate_fn=evaluate,
            )
            final_state = result.arrays.to_torch_state_dict() if result.arrays else global_state
    finally:
        # Also on a failed round: CodeCarbon's timers would otherwise outlive the run.
        energy_total = meter.stop()

    method.load_global_state(final_state)
    method.apply_round_config(totals.get("last_round_config") or logic.round_config())
    summary_extra: dict[str, Any] = {}
    if method.has_global_model:
        write_dir_atomic(run_dir.final, method.save_final)
        usage = method.routing_usage(runtime.eval_batches) if runtime.eval_batches else None
        if usage:
            run_dir.write_json("usage.json", {"method": method.name, "matrices": usage})
        summary_extra["final_metric"] = _final_metric(runtime, run_dir, config)
    summary = _summary(runtime, run_dir, metrics_rows, totals, energy_total, meter.method)
    summary.update(summary_extra)
    run_dir.write_json("summary.json", summary)
    return summary


def _eval_row(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "eval_loss_sum"}


def _final_metric(runtime, run_dir: RunDirectory, config: RunConfig) -> dict[str, Any] | None:
    """The task's benchmark on the final model (``--metric_samples`` items); resumable."""
    benchmark = runtime.task.benchmark
    if not config.metric_samples or not benchmark:
        return None
    path = run_dir.path / "final_metric.json"
    if path.is_file():
        result = json.loads(path.read_text(encoding="utf-8"))
    else:
        from smartfed.evaluation.harness import EvalTarget, evaluate_benchmark, write_result

        target = EvalTarget(
            model=runtime.method.model,
            tokenizer=runtime.tokenizer,
            description={"kind": "run", "run_dir": str(run_dir.path), "method": config.method},
        )
        result = evaluate_benchmark(
            target, benchmark, limit=config.metric_samples, data_dir=config.data_dir
        )
        write_result(result, path)
    return {k: result[k] for k in ("benchmark", "metric", "value", "correct", "n")}


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
    ]
    if row.get("quotas"):
        parts.append(f"K {min(row['quotas'])}-{max(row['quotas'])}")
    if row["dropped_clients"]:
        parts.append(f"dropped {len(row['dropped_clients'])}")
    print(" | ".join(parts), flush=True)


def _summary(runtime, run_dir, rows, totals, energy_total, energy_method) -> dict[str, Any]:
    evaluated = [r for r in rows if "eval_loss" in r]
    method = runtime.method
    trainable = method.num_trainable_parameters()
    initial = totals.get("initial_eval")
    # A method without rounds (static merging) is final as it starts.
    final_eval = None
    if evaluated:
        final_eval = {k: evaluated[-1][k] for k in ("round", "eval_loss", "eval_ppl")}
    elif initial and not rows:
        final_eval = {"round": 0, **{k: initial[k] for k in ("eval_loss", "eval_ppl")}}
    return {
        "method": method.name,
        "rounds": len(rows),
        "bytes_down": int(totals.get("bytes_down", 0)),
        "bytes_up": int(totals.get("bytes_up", 0)),
        "wall_s": float(totals.get("wall_s", 0.0)),
        "energy_kwh": None
        if totals.get("energy_unavailable")
        else (energy_total if energy_total is not None else totals.get("energy_kwh")),
        "energy_method": energy_method,
        "initial_eval": totals.get("initial_eval"),
        "final_eval": final_eval,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "mean_step_time_s": float(np.mean([r["step_time_s"] for r in rows])) if rows else None,
        "trainable_parameters": trainable,
        "communicated_parameters": sum(t.numel() for t in method.global_state().values()),
        "lora_equivalent_parameters": runtime.pool.num_parameters,
        "final_state": method.describe_final() if method.has_global_model else None,
        "pool": runtime.pool.names,
        "pool_fingerprint": runtime.pool.fingerprint(),
        "model": runtime.model_source.display_name,
        "final_dir": str(run_dir.final) if method.has_global_model else None,
    }
