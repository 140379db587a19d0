"""Secure aggregation (``--secure_aggregation``): Flower's SecAgg+ in place of the plain FedAvg
exchange, on the in-process engine (the deployed run is in test_deployment_security.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from smartfed.assembly.runtime import get_runtime
from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.federation import client_app as smartfed_client
from smartfed.federation.runner import run_federated
from smartfed.federation.secure_aggregation import (
    SecAggPlusParameters,
    aggregation_tolerance,
    check_payload,
)
from smartfed.federation.strategy import RoundFailed


def round_state(run: Path, server_round: int) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / f"round_{server_round:04d}"
    return load_file(folder / "global_state.safetensors")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def worst_case_tolerance(config: RunConfig) -> float:
    """The bound for any sample of the run's clients: the smallest partitions weigh least."""
    partitions = json.loads((Path(config.output_dir) / "partitions.json").read_text())
    sizes = [client["size"] for client in partitions["clients"]]
    params = SecAggPlusParameters.from_config(config, sizes)
    return aggregation_tolerance(sorted(sizes)[: config.sample_clients], params)


class RecordingClient:
    """SmartFed's ClientApp that keeps each round's payloads and weights (plain rounds)."""

    def __init__(self):
        self.app = ClientApp()
        self.app.train()(self.train)
        self.payloads: dict[int, list[tuple[int, dict[str, torch.Tensor]]]] = {}

    def train(self, msg: Message, context: Context) -> Message:
        reply = smartfed_client.train(msg, context)
        server_round = int(msg.content["config"]["server-round"])
        weight = int(reply.content["metrics"]["num-examples"])
        state = reply.content["arrays"].to_torch_state_dict()
        self.payloads.setdefault(server_round, []).append((weight, state))
        return reply


@pytest.mark.integration  # a whole run end to end
def test_secure_rounds_equal_plain_fedavg_within_the_quantisation_bound(tiny_run_config, tmp_path):
    # 5 clients over 48 examples: partitions of 10 and 9, so the weighting shows.
    common = dict(num_clients=5, sample_clients=3)
    plain = tiny_run_config(output_dir=str(tmp_path / "plain"), num_rounds=1, **common)
    recording = RecordingClient()
    run_federated(plain, client_app=recording.app)
    secure = tiny_run_config(
        output_dir=str(tmp_path / "secure"), num_rounds=2, secure_aggregation=True, **common
    )
    run_federated(secure)
    coarse = tiny_run_config(
        output_dir=str(tmp_path / "coarse"),
        num_rounds=1,
        secure_aggregation=True,
        secagg_quantization_range=2**12,
        **common,
    )
    run_federated(coarse)

    expected = round_state(Path(plain.output_dir), 1)
    tolerance = worst_case_tolerance(secure)
    assert 0 < tolerance < 1e-4
    error = largest_difference(round_state(Path(secure.output_dir), 1), expected)
    assert error <= tolerance, (error, tolerance)
    # The bound is far below what the round changed, and below what ignoring the weights
    # (a plain mean of the payloads) would change: equal within it means the same FedAvg.
    payloads = recording.payloads[1]
    assert len(payloads) == 3 and len({weight for weight, _ in payloads}) == 2
    unweighted = {
        name: torch.stack([state[name] for _, state in payloads]).mean(0) for name in expected
    }
    assert largest_difference(unweighted, expected) > 10 * tolerance
    sent = get_runtime(plain).initial_global_state
    assert largest_difference(expected, sent) > 1000 * tolerance

    # Coarser quantisation: a visibly larger error, still within its own (larger) bound.
    coarse_error = largest_difference(round_state(Path(coarse.output_dir), 1), expected)
    assert tolerance < coarse_error <= worst_case_tolerance(coarse), coarse_error

    # SecAgg+ ran its four exchanges per round (and sent masked integers up): more traffic,
    # the same sampled clients and losses, and a second round from the securely averaged state.
    plain_row, secure_rows = rows(Path(plain.output_dir))[0], rows(Path(secure.output_dir))
    assert [row["round"] for row in secure_rows] == [1, 2]
    assert secure_rows[0]["sampled_clients"] == plain_row["sampled_clients"]
    assert secure_rows[0]["train_loss"] == pytest.approx(plain_row["train_loss"], rel=1e-12)
    assert secure_rows[0]["bytes_up"] > 2 * plain_row["bytes_up"]
    assert secure_rows[0]["bytes_down"] > plain_row["bytes_down"]
    assert all(not row["dropped_clients"] for row in secure_rows)
    saved = json.loads((Path(secure.output_dir) / "config.json").read_text())
    assert saved["secure_aggregation"] is True
    assert saved["secagg_quantization_range"] == 2**22 and saved["secagg_clipping_range"] == 8.0


def test_a_value_outside_the_clipping_range_fails_the_round_in_one_line(tiny_run_config):
    config = tiny_run_config(num_rounds=1, secure_aggregation=True, secagg_clipping_range=1e-6)
    with pytest.raises(RoundFailed) as failure:
        run_federated(config)
    message = str(failure.value)
    assert "\n" not in message
    assert "outside the SecAgg+ range ±1e-06 (raise --secagg_clipping_range)" in message


def test_check_payload_refuses_what_cannot_enter_the_secure_sum():
    good = {"a": torch.tensor([0.5, -1.0])}
    check_payload(good, ["a"], 1.0, 8.0)
    with pytest.raises(ValueError, match="differ from the global state"):
        check_payload(good, ["a", "b"], 1.0, 8.0)
    with pytest.raises(ValueError, match="NaN/Inf"):
        check_payload({"a": torch.tensor([float("nan")])}, ["a"], 1.0, 8.0)
    with pytest.raises(ValueError, match="train loss is nan"):
        check_payload(good, ["a"], float("nan"), 8.0)
    with pytest.raises(ValueError, match="float values only"):
        check_payload({"a": torch.tensor([1, 2])}, ["a"], 1.0, 8.0)
    with pytest.raises(ValueError, match=r"size 9, outside the SecAgg\+ range ±8"):
        check_payload({"a": torch.tensor([9.0])}, ["a"], 1.0, 8.0)


def test_tolerance_grows_with_coarser_steps_and_lighter_weights():
    def params(levels: int) -> SecAggPlusParameters:
        return SecAggPlusParameters(1.0, 0.67, 8.0, levels, max_weight=100)

    fine = aggregation_tolerance([100, 100], params(2**22))
    assert fine == pytest.approx((16 / 2**22) * 1.75 + 8 / 2**22 + 64 * 2**-24)
    assert aggregation_tolerance([100, 100], params(2**12)) > 400 * fine
    assert aggregation_tolerance([10, 10], params(2**22)) > 5 * fine
    with pytest.raises(ValueError, match="quantises to zero"):
        aggregation_tolerance([1, 1], SecAggPlusParameters(1.0, 0.67, 8.0, 1024, 10**6))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(secagg_num_shares=0.5), "--secagg_num_shares applies to --secure_aggregation only"),
        (dict(secagg_clipping_range=4.0),
         "--secagg_clipping_range applies to --secure_aggregation only"),
        (dict(secure_aggregation=True, sample_clients=1),
         "--secure_aggregation needs at least 2 sampled clients"),
        (dict(secure_aggregation=True, wire_dtype="bfloat16"), "--wire_dtype must be float32"),
        (dict(secure_aggregation=True, aggregation="median", sample_clients=3),
         "so --aggregation \\(which needs each client's update\\) cannot"),
        (dict(secure_aggregation=True, clip_update_norm=1.0), "so --clip_update_norm"),
        (dict(secure_aggregation=True, secagg_num_shares=0.0), "--secagg_num_shares must be > 0"),
        (dict(secure_aggregation=True, secagg_num_shares=1.5), "--secagg_num_shares must be <= 1"),
        (dict(secure_aggregation=True, secagg_reconstruction_threshold=0.0),
         "--secagg_reconstruction_threshold must be > 0"),
        (dict(secure_aggregation=True, secagg_clipping_range=-1.0),
         "--secagg_clipping_range must be > 0"),
        (dict(secure_aggregation=True, secagg_quantization_range=100),
         "--secagg_quantization_range must be >= 1024"),
        (dict(secure_aggregation=True, secagg_quantization_range=2**31),
         "x --sample_clients \\(2\\) must stay below 2\\*\\*32"),
    ],
)  # fmt: skip
def test_bad_secure_aggregation_settings_are_refused_in_one_line(
    tiny_run_config, overrides, message
):
    with pytest.raises(ConfigError, match=message) as refused:
        tiny_run_config(**overrides)
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_the_simulation_engine_aggregates_securely_like_the_inprocess_one(
    tiny_run_config, tmp_path
):
    # Each client's stochastic rounding is seeded with its training (client_seed), so the same
    # run gives the same secure sums whichever engine runs the clients (measured: bit-identical).
    shape = dict(num_clients=3, sample_clients=2, num_rounds=2, secure_aggregation=True)
    inprocess = tiny_run_config(**shape, output_dir=str(tmp_path / "inprocess"))
    run_federated(inprocess)
    simulated = tiny_run_config(**shape, engine="simulation", output_dir=str(tmp_path / "sim"))
    run_federated(simulated)
    for server_round in (1, 2):
        expected = round_state(Path(inprocess.output_dir), server_round)
        actual = round_state(Path(simulated.output_dir), server_round)
        assert largest_difference(expected, actual) <= 1e-6
    assert all(not row["dropped_clients"] for row in rows(Path(simulated.output_dir)))
