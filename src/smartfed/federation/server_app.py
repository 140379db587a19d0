"""SmartFed's Flower ServerApp: the rounds and the server's evaluation of the global model.

The same app runs every method (:mod:`smartfed.methods`); what is averaged, what the server
adds to FedAvg and how the final model is saved are the method's. The strategy
(:mod:`.strategy`) runs the rounds and hands each finished round over; the run directory
(metrics, checkpoints, resume, final model, summary) is the recorder's
(:mod:`smartfed.engine.recorder`).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from smartfed.assembly.runtime import Runtime, get_runtime
from smartfed.data import partition_stats
from smartfed.engine.config import RunConfig
from smartfed.engine.evaluation import evaluate_loss
from smartfed.engine.recorder import RoundReport, RunRecorder, start_run
from smartfed.engine.rundir import RunDirectory
from smartfed.errors import DamagedFileError, StorageError
from smartfed.federation.settings import from_run_config
from smartfed.federation.strategy import SmartFedStrategy
from smartfed.utils.io import read_json

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, from_run_config(context.run_config))


def run_server(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run (or continue) the federated rounds and write the run directory; return the summary.

    The run holds its directory's lock from its first read to its last write: one writer per
    run directory. A write the storage refuses (full disk, read-only) ends the run in one line
    that says how to continue it; the directory keeps its last committed round."""
    run_dir = RunDirectory(config.output_dir)
    with run_dir.lock():
        try:
            return _run_locked(grid, config)
        except StorageError as exc:
            if run_dir.config_path.is_file():
                then = (
                    f"once fixed, `smartfed run --resume {run_dir.path}` continues from the "
                    "last committed round"
                )
            else:
                then = "once fixed, start the run again"
            raise StorageError(f"{exc}; {then}") from exc


def _run_locked(grid: Grid, config: RunConfig) -> dict[str, Any]:
    resumed = start_run(config)  # None for a new run; refuses to overwrite one
    runtime = get_runtime(config)
    method = runtime.method
    recorder = RunRecorder(
        config,
        method,
        resumed,
        model_name=runtime.model_source.display_name,
        partitions=partition_stats(
            runtime.partitions, runtime.train_examples, field=runtime.partition_field
        ),
    )

    def round_ended(report: RoundReport, global_state: dict[str, torch.Tensor]) -> None:
        evaluation = None
        server_eval = recorder.evaluates_on_server(report.server_round)
        target_eval = recorder.evaluates_target(report.server_round)
        if server_eval or target_eval:
            evaluation = _evaluate(
                runtime, global_state, report.round_config, in_distribution=server_eval,
                target=target_eval,
            )  # fmt: skip
        recorder.record_round(report, global_state, evaluation)

    strategy_class = SmartFedStrategy
    if config.secure_aggregation:  # Flower's SecAgg+ for the training exchange
        from smartfed.federation.secure_aggregation import SecureAggregationStrategy

        sizes = (len(partition) for partition in runtime.partitions)
        strategy_class = SecureAggregationStrategy.for_config(config, sizes)
    strategy = strategy_class(
        num_clients=config.num_clients,
        sample_clients=config.sample_clients,
        min_replies=config.min_replies,
        server_logic=recorder.server_logic,
        seed=config.seed,
        on_round_end=round_ended,
        round_offset=recorder.rounds_done,
        client_eval_rounds=recorder.is_eval_round if method.evaluates_on_clients else None,
        wire_dtype=config.wire_dtype,
        aggregation=config.aggregation_rule,
        privacy=recorder.privacy,
    )
    global_state = resumed.global_state if resumed else runtime.initial_global_state
    with recorder.measuring_energy():
        if recorder.needs_initial_eval:
            round_config = recorder.server_logic.round_config()
            # A cached runtime's client-local state may be another run's: start from the initial.
            initial = _evaluate(
                runtime, global_state, round_config, runtime.initial_local_state,
                in_distribution=bool(config.eval_samples), target=recorder.evaluates_target(0),
            )  # fmt: skip
            recorder.record_initial_eval(initial)
        if recorder.rounds_left > 0:
            global_state = strategy.run(grid, global_state, recorder.rounds_left)
    return recorder.finish(
        global_state,
        usage_batches=runtime.eval_batches,
        final_metric=lambda: _final_metric(runtime, recorder.run_dir, config),
    )


def _evaluate(
    runtime: Runtime,
    global_state: dict[str, torch.Tensor],
    round_config: dict[str, Any],
    local_state: dict[str, torch.Tensor] | None = None,
    *,
    in_distribution: bool = True,
    target: bool = False,
) -> dict[str, Any]:
    """Held-out loss (``eval_*``) and target-set loss (``target_*``) of the method's model with
    ``global_state`` under ``round_config``, each with its truncation count."""
    method = runtime.method
    method.load_global_state(global_state)
    if local_state is not None:
        method.load_local_state(local_state)
    method.apply_round_config(round_config)
    result: dict[str, Any] = {}
    if in_distribution:
        result |= evaluate_loss(method.model, runtime.eval_batches)
        result["eval_truncated"] = runtime.eval_encoding.get("truncated", 0)
    if target:
        result |= evaluate_loss(method.model, runtime.target_batches, prefix="target")
        result["target_truncated"] = runtime.target_encoding.get("truncated", 0)
    return result


def _final_metric(
    runtime: Runtime, run_dir: RunDirectory, config: RunConfig
) -> dict[str, Any] | None:
    """The task's benchmark on the final model (``--metric_samples`` items); resumable."""
    benchmark = runtime.task.benchmark
    if not config.metric_samples or not benchmark:
        return None
    path = run_dir.path / "final_metric.json"
    keys = ("benchmark", "metric", "value", "correct", "n")
    try:
        result = read_json(path) if path.is_file() else None
    except DamagedFileError:
        result = None  # derived from final/: scored again
    if result is None or not set(keys) <= set(result):
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
    return {k: result[k] for k in keys}
