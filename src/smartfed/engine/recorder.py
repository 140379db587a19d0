"""The server's record of a run: metrics rows, totals, energy, checkpoints, final model, summary.

The ServerApp runs the rounds; a :class:`RunRecorder` writes down what they did, in the run
directory (:mod:`smartfed.engine.rundir`). Typical use, as in ``run_server``::

    resumed = start_run(config)               # under RunDirectory.lock(); None for a new run
    recorder = RunRecorder(config, method, resumed, model_name=..., partitions=...)
    with recorder.measuring_energy():
        recorder.record_initial_eval(...)     # round 0, once per run
        for each finished round:
            recorder.record_round(report, global_state, evaluation)
    summary = recorder.finish(final_state, ...)  # final/, usage.json, summary.json

Crash safety: a round is committed by its checkpoint (which also holds the round's metrics
row), and only then is the row appended to metrics.jsonl; a resumed run drops every row newer
than its checkpoint (a round that was not committed is replayed in full) and restores the
checkpoint's own row if a crash lost it. Nothing is rewritten before a resume's checks pass.
Energy that could not be measured is ``None``, never 0: once one reading is missing, the run's
total is unknown.

No Flower here: the strategy hands over one :class:`RoundReport` per finished round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from smartfed import __version__
from smartfed.data.tasks import get_task
from smartfed.engine.privacy import CentralPrivacy
from smartfed.engine.rundir import RunDirectory, ServerState
from smartfed.errors import ConfigError, SmartFedError
from smartfed.models import dtype_name, model_device, model_dtype
from smartfed.telemetry import EnergyMeter
from smartfed.telemetry.reporting import MetricsReporter, open_reporter
from smartfed.utils.io import write_dir_atomic

if TYPE_CHECKING:
    import torch

    from smartfed.engine.config import RunConfig
    from smartfed.engine.method import FederatedMethod

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    """What the server learned in one round; the strategy hands it over when the round ends."""

    server_round: int  # absolute: a resumed run continues the count
    sampled: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    bytes_down: int = 0
    bytes_up: int = 0
    train_loss: float | None = None
    step_time_s: float | None = None
    round_config: dict = field(default_factory=dict)  # the method's round config it used
    client_eval: dict[str, float] | None = None  # clients' own evaluation, if the method has one
    bytes_eval: int = 0  # that evaluation's traffic (not training communication)
    # --clip_update_norm: each usable client's update norm, before clipping
    update_norms: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


def load_resume_state(config: RunConfig) -> ServerState | None:
    """The newest intact checkpoint in ``config.output_dir``, or None for a new run.

    Reads only, and checks everything a resume reads before anything is rewritten: the
    checkpoints (their checksums; a damaged newest one is passed over for the newest intact
    one, with one logged line) and metrics.jsonl. A new run (no ``--resume``) is refused in a
    folder that holds anything but its lock (or a DP key placed for it), unless ``--overwrite``
    is given; ``--resume`` is the only way to continue a run. The returned state's ``metrics``
    are the rows to keep.
    """
    run_dir = RunDirectory(config.output_dir)
    if not config.resume:
        leftover = run_dir.leftover_files()
        if leftover and not config.overwrite:
            state = _checkpoint_or_none(run_dir)
            held = f"a run (checkpoint of round {state.round})" if state else "files"
            shown = ", ".join(leftover[:4]) + (", ..." if len(leftover) > 4 else "")
            raise ConfigError(
                f"{run_dir.path} already holds {held} ({shown}); continue it with --resume "
                f"{run_dir.path}, give --overwrite to delete its run files first, or choose "
                "another --output_dir"
            )
        return None
    state = run_dir.latest_checkpoint()
    rows = run_dir.read_metrics()  # a damaged metrics.jsonl is refused before any write
    if state is None:
        if rows:
            log.info("%s: no checkpoint yet: the run starts again from round 1", run_dir.path)
        return None
    kept = [r for r in rows if _round_of(r) < state.round]
    own = state.row or next((r for r in rows if _round_of(r) == state.round), None)
    state.metrics = kept + ([own] if own is not None else [])  # later rows: not committed
    if state.round >= config.num_rounds:
        log.info("run in %s is already complete (%d rounds)", run_dir.path, state.round)
    return state


def start_run(config: RunConfig) -> ServerState | None:
    """:func:`load_resume_state`, then, for a new run with ``--overwrite``, delete the previous
    run's files. Call it while holding the run directory's lock (:meth:`RunDirectory.lock`)."""
    resumed = load_resume_state(config)
    if not config.resume and config.overwrite:
        removed = RunDirectory(config.output_dir).remove_run_files()
        if removed:
            log.info("--overwrite: deleted %s from %s", ", ".join(removed), config.output_dir)
    return resumed


def _checkpoint_or_none(run_dir: RunDirectory) -> ServerState | None:
    try:
        return run_dir.latest_checkpoint()
    except SmartFedError:
        return None


def _round_of(row: dict[str, Any]) -> int:
    value = row.get("round", 0)
    return value if isinstance(value, int) else 0


class RunRecorder:
    """Writes one run's directory while the server runs it (see the module docstring).

    Opening a recorder writes config.json and partitions.json and cuts metrics.jsonl back to
    the last checkpoint.

    Args:
        config: the run's configuration (only shared settings are read).
        method: the run's method; its server logic is built here (and restored on resume), and
            its final model is saved by :meth:`finish`.
        resumed: the checkpoint to continue from (:func:`load_resume_state`), or None.
        model_name: the base model's display name, for summary.json.
        partitions: per-client partition statistics, for partitions.json.
        energy_meter: defaults to CodeCarbon's, carrying on from the checkpointed total.
        reporter: where each round's numbers also go; defaults to ``config.report_to``'s
            (TensorBoard, wandb or none), continuing after the last checkpointed round.
    """

    def __init__(
        self,
        config: RunConfig,
        method: FederatedMethod,
        resumed: ServerState | None = None,
        *,
        model_name: str,
        partitions: list[dict[str, Any]],
        energy_meter: EnergyMeter | None = None,
        reporter: MetricsReporter | None = None,
    ):
        self.config = config
        self.method = method
        self.model_name = model_name
        self.run_dir = RunDirectory(config.output_dir)
        self.resumed = resumed is not None
        self.rounds_done = resumed.round if resumed else 0
        self.totals: dict[str, Any] = dict(resumed.totals) if resumed else {}
        self.server_logic = method.server_logic(config)  # may refuse the config: no round ran
        if config.target_samples and method.evaluates_on_clients and not self.resumed:
            log.warning("%s keeps a model per client: the target set is not scored", method.name)
        if resumed:
            self.server_logic.load_state_dict(resumed.server_logic)
        # Central DP (or None), with the run's secret noise key from (or into) the run directory.
        self.privacy = CentralPrivacy.from_config(config, key_dir=self.run_dir.path)
        # Metrics rows past the checkpoint belong to a round that was not committed.
        if resumed is None:
            self.rows: list[dict[str, Any]] = []
        elif resumed.metrics is not None:
            self.rows = list(resumed.metrics)
        else:
            self.rows = [r for r in self.run_dir.read_metrics() if _round_of(r) <= resumed.round]
        # Written only now, after every check a resume makes.
        self._write_setup(partitions)
        self.run_dir.write_metrics(self.rows)
        if energy_meter is None:
            energy_meter = EnergyMeter(
                country_iso_code=config.energy_country,
                offset_kwh=float(self.totals.get("energy_kwh", 0.0)),
            )
        self.meter = energy_meter
        self.energy_total: float | None = None  # the meter's reading at the end of the rounds
        if reporter is None:
            # Steps after the checkpoint replace what a crashed process wrote (no duplicates).
            reporter = open_reporter(
                config.report_to,
                self.run_dir.path,
                first_step=self.rounds_done + 1 if self.resumed else 0,
                config=config.to_dict(),
            )
        self.reporter = reporter

    def _write_setup(self, partitions: list[dict[str, Any]]) -> None:
        config = self.config
        self.run_dir.write_json(
            "config.json", {**config.to_dict(), "smartfed_version": __version__}
        )
        self.run_dir.write_json(
            "partitions.json", {"scheme": config.partition, "clients": partitions}
        )
        if not self.resumed:
            sizes = [row["size"] for row in partitions]
            log.info("partition %s: %d clients, sizes %s", config.partition, len(sizes), sizes)

    def _target_description(self) -> dict[str, Any] | None:
        config = self.config
        if not config.target_samples:
            return None
        if self.method.evaluates_on_clients:
            return {"skipped": f"{self.method.name} keeps a model per client: no target loss"}
        initial = self.totals.get("initial_eval") or {}
        return {
            "data": _target_name(config),
            "split": config.target_split,
            "samples": config.target_samples,
            "truncated": initial.get("target_truncated"),
            "max_seq_len": config.target_max_seq_len,
        }

    # ------------------------------------------------------------------ the plan
    @property
    def rounds_left(self) -> int:
        """Rounds still to run; a method that does not train (static merging) has none."""
        return self.config.num_rounds - self.rounds_done if self.method.trains else 0

    def is_eval_round(self, server_round: int) -> bool:
        """Evaluated: every ``eval_every`` rounds and the last one (never with eval_samples 0)."""
        config = self.config
        return bool(config.eval_samples) and (
            server_round % config.eval_every == 0 or server_round == config.num_rounds
        )

    def evaluates_on_server(self, server_round: int) -> bool:
        """Whether the server evaluates the global state after this round (else the clients
        do, for methods that evaluate on clients, or nobody)."""
        return self.is_eval_round(server_round) and not self.method.evaluates_on_clients

    def evaluates_target(self, server_round: int) -> bool:
        """Whether the server scores the target set after this round: every ``target_every``
        rounds, round 0 and the last, for methods with one global model (per-client models
        have no single target loss)."""
        config = self.config
        scheduled = server_round % config.target_every == 0 or server_round == config.num_rounds
        return bool(config.target_samples) and scheduled and not self.method.evaluates_on_clients

    @property
    def needs_initial_eval(self) -> bool:
        """Round 0 is evaluated once per run, also when a run is resumed before round 1 ends."""
        return (
            self.rounds_done == 0
            and (bool(self.config.eval_samples) or self.evaluates_target(0))
            and "initial_eval" not in self.totals
        )

    # ------------------------------------------------------------------ recording
    @contextmanager
    def measuring_energy(self) -> Iterator[EnergyMeter]:
        """Energy is metered inside this block; the meter stops also when a round fails
        (CodeCarbon's timers would otherwise outlive the run)."""
        self.meter.start()
        try:
            yield self.meter
        except BaseException:
            self.reporter.close(failed=True)  # the rounds failed: finish() will not run
            raise
        finally:
            self.energy_total = self.meter.stop()

    def record_initial_eval(self, evaluation: dict[str, Any]) -> None:
        self.totals["initial_eval"] = _eval_row(evaluation)
        self.reporter.log(0, *dashboard_metrics(self.totals["initial_eval"], {}))
        initial = self.totals["initial_eval"]
        log.info(
            "round 0: eval loss %.4f, target loss %.4f",
            initial.get("eval_loss", float("nan")),
            initial.get("target_loss", float("nan")),
        )

    def record_round(
        self,
        report: RoundReport,
        global_state: dict[str, torch.Tensor],
        evaluation: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Commit a finished round: the checkpoint (holding the round's metrics row), then
        the row in metrics.jsonl and the dashboard; print its line.

        ``evaluation`` is the server's evaluation of ``global_state`` (on the rounds where
        :meth:`evaluates_on_server`); methods that evaluate on clients bring theirs in the
        report. Returns the row.
        """
        absolute = report.server_round
        row: dict[str, Any] = {
            "round": absolute,
            "train_loss": report.train_loss,
            "bytes_down": report.bytes_down,
            "bytes_up": report.bytes_up,
            "sampled_clients": report.sampled,
            "dropped_clients": {str(k): v for k, v in report.dropped.items()},
            "step_time_s": report.step_time_s,
            **self.server_logic.round_fields(report.round_config),
            **(self.privacy.round_fields(absolute) if self.privacy else {}),  # ε spent so far
        }
        setup = self.method.setup_bytes() if absolute == 1 else 0
        if setup:  # tensors sent once before round 1 (Fed-SB's frozen A and B)
            row["bytes_setup"] = setup
            row["bytes_down"] += setup
        if self.config.clip_update_norm is not None:  # the norms C was compared with
            row["update_norms"] = {str(k): v for k, v in report.update_norms.items()}
        if self.is_eval_round(absolute) and self.method.evaluates_on_clients:
            row.update(_eval_row(report.client_eval or {}))
            row["bytes_eval"] = report.bytes_eval  # evaluation traffic, not in bytes_up/down
        elif evaluation is not None:
            row.update(_eval_row(evaluation))
        row["energy_kwh"] = self.meter.cumulative_kwh()
        row["wall_s"] = time.time() - report.started
        totals = self.totals
        for key in ("bytes_down", "bytes_up", "wall_s"):
            totals[key] = totals.get(key, 0) + row[key]
        if row["energy_kwh"] is None:  # unmeasured is not 0 kWh: the whole run's total is unknown
            totals["energy_unavailable"] = True
        else:
            totals["energy_kwh"] = row["energy_kwh"]
        totals["last_round_config"] = report.round_config
        state = ServerState(
            round=absolute,
            global_state=global_state,
            server_logic=self.server_logic.state_dict(),
            totals=totals,
            rng=ServerState.capture_rng(),
            row=row,
        )
        # Order matters for crash safety: the checkpoint commits the round, then the row is
        # appended, so metrics.jsonl never shows an uncommitted round (a row lost between the
        # two is restored from the checkpoint on resume). The dashboard goes with the row: a
        # resumed reporter drops steps newer than the checkpoint too.
        self.run_dir.save_checkpoint(state)
        self.rows.append(row)
        self.rounds_done = absolute
        self.run_dir.write_metrics(self.rows)
        self.reporter.log(absolute, *dashboard_metrics(row, totals))
        print_round(row, self.config.num_rounds)
        return row

    def finish(
        self,
        final_state: dict[str, torch.Tensor],
        *,
        usage_batches: Iterable[dict[str, torch.Tensor]] | None = None,
        final_metric: Callable[[], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Load the final state; write final/, usage.json and summary.json; return the summary.

        ``usage_batches`` are what routing usage is measured on (the held-out batches);
        ``final_metric`` scores the task benchmark on the final model (methods with a global
        model only), after final/ is saved.
        """
        method = self.method
        method.load_global_state(final_state)
        method.apply_round_config(
            self.totals.get("last_round_config") or self.server_logic.round_config()
        )
        extra: dict[str, Any] = {}
        if method.has_global_model:
            write_dir_atomic(self.run_dir.final, method.save_final)
            usage = method.routing_usage(usage_batches) if usage_batches else None
            if usage:
                self.run_dir.write_json("usage.json", {"method": method.name, "matrices": usage})
            extra["final_metric"] = final_metric() if final_metric else None
        summary = {**self.summary(), **extra}
        self.run_dir.write_json("summary.json", summary)
        self.reporter.close()
        return summary

    def summary(self) -> dict[str, Any]:
        """summary.json's totals (without the task benchmark, which :meth:`finish` adds)."""
        rows, totals, method = self.rows, self.totals, self.method
        evaluated = [r for r in rows if "eval_loss" in r]
        initial = totals.get("initial_eval")
        # A method without rounds (static merging) is final as it starts.
        final_eval = None
        if evaluated:
            final_eval = {k: evaluated[-1][k] for k in ("round", "eval_loss", "eval_ppl")}
        elif initial and not rows and "eval_loss" in initial:
            final_eval = {"round": 0, **{k: initial[k] for k in ("eval_loss", "eval_ppl")}}
        targeted = [r for r in rows if "target_loss" in r]
        final_target = None
        if targeted:
            final_target = {k: targeted[-1][k] for k in ("round", "target_loss", "target_ppl")}
        elif initial and not rows and "target_loss" in initial:
            final_target = {"round": 0, **{k: initial[k] for k in ("target_loss", "target_ppl")}}
        if totals.get("energy_unavailable"):
            energy = None
        else:
            energy = (
                self.energy_total if self.energy_total is not None else totals.get("energy_kwh")
            )
        return {
            "method": method.name,
            "rounds": len(rows),
            "bytes_down": int(totals.get("bytes_down", 0)),
            "bytes_up": int(totals.get("bytes_up", 0)),
            "wall_s": float(totals.get("wall_s", 0.0)),
            "energy_kwh": energy,
            "energy_method": self.meter.method,
            "initial_eval": initial,
            "final_eval": final_eval,
            "final_target": final_target,
            # What the target loss was computed on (None: off): the task's other benchmark in
            # its training format, or the user's --target_data.
            "target": self._target_description(),
            "final_train_loss": rows[-1]["train_loss"] if rows else None,
            "mean_step_time_s": float(np.mean([r["step_time_s"] for r in rows])) if rows else None,
            "trainable_parameters": method.num_trainable_parameters(),
            "communicated_parameters": sum(t.numel() for t in method.global_state().values()),
            "wire_dtype": self.config.wire_dtype,  # the precision those values travelled in
            "aggregation": self.config.aggregation_rule.describe(),  # and how they were combined
            # Central DP: ε after these rounds, the mechanism, and what ε does not cover.
            "privacy": self.privacy.describe(len(rows)) if self.privacy else None,
            # Where the model ran and the precision of its base weights (config.json has the
            # requested --device, e.g. "auto").
            "device": str(model_device(method.model)),
            "dtype": dtype_name(model_dtype(method.model)),
            "lora_equivalent_parameters": method.pool.num_parameters,
            "final_state": method.describe_final() if method.has_global_model else None,
            "pool": method.pool.names,
            "pool_fingerprint": method.pool.fingerprint(),
            "model": self.model_name,
            "final_dir": str(self.run_dir.final) if method.has_global_model else None,
        }


def _target_name(config: RunConfig) -> str:
    return config.target_data or get_task(config.task).target_dataset


def _eval_row(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.endswith("_loss_sum")}


def dashboard_metrics(
    row: dict[str, Any], totals: dict[str, Any]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A metrics row as a dashboard's scalars and histograms (``--report_to``): losses,
    traffic (the round's and, from ``totals``, the run's so far), EEQA quotas, energy, time."""
    scalars: dict[str, float] = {}
    sources = {
        "loss/train": row.get("train_loss"),
        "loss/eval": row.get("eval_loss"),
        "loss/eval_ppl": row.get("eval_ppl"),
        "loss/target": row.get("target_loss"),
        "bytes/down": row.get("bytes_down"),
        "bytes/up": row.get("bytes_up"),
        "bytes/down_total": totals.get("bytes_down"),
        "bytes/up_total": totals.get("bytes_up"),
        "bytes/eval": row.get("bytes_eval"),  # client evaluation traffic (FedSA-LoRA)
        "energy/kwh_total": row.get("energy_kwh"),  # cumulative; None: not measured
        "time/round_s": row.get("wall_s"),
        "time/step_s": row.get("step_time_s"),
        "privacy/epsilon": row.get("dp_epsilon"),  # central DP: spent so far
    }
    for tag, value in sources.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            scalars[tag] = float(value)
    if "dropped_clients" in row:
        scalars["clients/dropped"] = float(len(row["dropped_clients"]))
    histograms: dict[str, list[float]] = {}
    if row.get("quotas"):  # EEQA's K per matrix
        quotas = [float(k) for k in row["quotas"]]
        histograms["quotas"] = quotas
        scalars |= {"quotas/min": min(quotas), "quotas/max": max(quotas),
                    "quotas/mean": float(np.mean(quotas))}  # fmt: skip
    if row.get("importance"):
        histograms["importance"] = [float(v) for v in row["importance"]]
    return scalars, histograms


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def print_round(row: dict[str, Any], num_rounds: int) -> None:
    """The one line per round a run prints."""
    parts = [
        f"round {row['round']}/{num_rounds}",
        f"loss {row['train_loss']:.4f}",
    ]
    if "eval_loss" in row:
        parts.append(f"eval {row['eval_loss']:.4f}")
    if "target_loss" in row:
        parts.append(f"target {row['target_loss']:.4f}")
    parts += [
        f"down {_mib(row['bytes_down'])}",
        f"up {_mib(row['bytes_up'])}",
        f"{row['wall_s']:.1f} s",
    ]
    if row.get("quotas"):
        parts.append(f"K {min(row['quotas'])}-{max(row['quotas'])}")
    if "dp_epsilon" in row:
        parts.append(f"eps {row['dp_epsilon']:.3g} (delta {row['dp_delta']:g})")
    if row["dropped_clients"]:
        parts.append(f"dropped {len(row['dropped_clients'])}")
    print(" | ".join(parts), flush=True)
