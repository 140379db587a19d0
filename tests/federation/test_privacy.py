"""Central DP through the real strategy and the in-process engine: the aggregate deviates from
plain FedAvg by noise of std σC/n, ε per round is recorded, and a resumed run is exact."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from smartfed.engine.method import ServerLogic
from smartfed.engine.privacy import KEY_FILE, CentralPrivacy, epsilon_spent
from smartfed.federation.inprocess import InProcessGrid
from smartfed.federation.runner import run_federated
from smartfed.federation.strategy import SmartFedStrategy

from .crashing import CrashAtRound

CLIENTS = 4
SHAPES = {"a.router.weight": (100, 150), "b.router.weight": (5000,)}  # 20,000 coordinates


def _global_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}


def _client_app(examples: int = 10) -> ClientApp:
    """Each client returns the state it got plus its own fixed update (norm about 0.14, below
    the clip norm), with the same number of examples: DP's mean and FedAvg's then coincide."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        rng = np.random.default_rng(100 + partition)
        state = msg.content["arrays"].to_numpy_ndarrays()
        names = list(msg.content["arrays"].keys())
        updated = {
            name: torch.from_numpy((value + 1e-3 * rng.normal(size=value.shape)).astype("f4"))
            for name, value in zip(names, state, strict=True)
        }
        metrics = {"num-examples": examples, "train-loss": 1.0, "tokens": 5, "step-time-s": 0.1}
        return Message(
            RecordDict({"arrays": ArrayRecord(updated), "metrics": MetricRecord(metrics)}),
            reply_to=msg,
        )

    return app


def _one_round(privacy: CentralPrivacy | None) -> dict[str, np.ndarray]:
    ended: dict[str, torch.Tensor] = {}
    strategy = SmartFedStrategy(
        num_clients=CLIENTS,
        sample_clients=CLIENTS,  # everyone: both strategies aggregate the same clients
        min_replies=1,
        server_logic=ServerLogic(),
        seed=0,
        on_round_end=lambda report, state: ended.update(state),
        node_wait_s=5,
        privacy=privacy,
    )
    grid = InProcessGrid(_client_app(), CLIENTS, {})
    strategy.run(grid, _global_state(), num_rounds=1)
    return {name: tensor.numpy().astype(np.float64) for name, tensor in ended.items()}


def test_dp_aggregate_deviates_from_fedavg_by_sigma_c_over_n():
    sigma, clip = 0.8, 0.5
    plain = _one_round(None)
    private = _one_round(CentralPrivacy(sigma, clip, 1e-5, "poisson", CLIENTS, CLIENTS, key=42))
    start = {name: t.numpy().astype(np.float64) for name, t in _global_state().items()}
    assert not np.allclose(plain["a.router.weight"], start["a.router.weight"])  # clients moved
    deviation = np.concatenate([(private[n] - plain[n]).ravel() for n in SHAPES])
    assert deviation.size == 20_000
    # The std of 20,000 Gaussian draws is within ~0.5 % of the truth; float32 rounding ~1e-7.
    assert deviation.std() == pytest.approx(sigma * clip / CLIENTS, rel=0.03)
    assert abs(deviation.mean()) < 0.01 * sigma * clip / CLIENTS * 5
    # σ = 0: DP's mean of unclipped, equally weighted updates is FedAvg's.
    noiseless = _one_round(CentralPrivacy(0.0, clip, 1e-5, "poisson", CLIENTS, CLIENTS, key=42))
    for name in SHAPES:
        np.testing.assert_allclose(noiseless[name], plain[name], rtol=0, atol=1e-6)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# EEQA is refused under DP (its quotas would leak the clients' importance): uniform K.
DP = dict(dp_noise_multiplier=0.9, dp_clip_norm=0.05, dp_accounting="poisson", enable_eeqa=False)


@pytest.mark.integration  # a whole run end to end
def test_dp_run_records_epsilon_per_round_and_in_the_summary(tiny_run_config):
    config = tiny_run_config(**DP)
    summary = run_federated(config)
    run = Path(config.output_dir)
    rows = _rows(run)
    expected = [epsilon_spent(0.9, 2, 4, r, 1e-5, "poisson") for r in (1, 2, 3)]
    assert [r["dp_epsilon"] for r in rows] == pytest.approx(expected, rel=1e-9)
    assert expected[0] < expected[1] < expected[2]
    assert all(r["dp_delta"] == 1e-5 for r in rows)
    privacy = json.loads((run / "summary.json").read_text())["privacy"]
    assert privacy == summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    assert privacy["rounds"] == 3 and privacy["sampling_rate"] == 0.5
    assert privacy["noise_std"] == pytest.approx(0.9 * 0.05 / 2)
    assert "EEQA" in privacy["covers"] and "refused under DP" in privacy["covers"]
    # Uniform K: every round broadcasts the same quotas, whatever the clients sent.
    assert len({json.dumps(r["quotas"]) for r in rows}) == 1
    assert stat.S_IMODE((run / KEY_FILE).stat().st_mode) == 0o600
    saved = json.loads((run / "config.json").read_text())
    assert saved["dp_noise_multiplier"] == 0.9 and saved["dp_accounting"] == "poisson"


@pytest.mark.integration  # a whole run end to end
def test_dp_run_resumed_after_a_crash_equals_the_uninterrupted_one(tiny_run_config, tmp_path):
    """Same secret key (placed before either run starts): same clients, same noise."""
    key = json.dumps({"key": "5eed" * 8})
    reference = tiny_run_config(output_dir=str(tmp_path / "reference"), **DP)
    crashed = tiny_run_config(output_dir=str(tmp_path / "crashed"), **DP)
    for config in (reference, crashed):
        Path(config.output_dir).mkdir(parents=True)
        (Path(config.output_dir) / KEY_FILE).write_text(key)
    run_federated(reference)
    with pytest.raises(KeyboardInterrupt):
        run_federated(crashed, client_app=CrashAtRound(3).app)
    run_federated(replace(crashed, resume=True))

    ref_rows, res_rows = _rows(Path(reference.output_dir)), _rows(Path(crashed.output_dir))
    assert [r["round"] for r in res_rows] == [1, 2, 3]
    for a, b in zip(ref_rows, res_rows, strict=True):
        assert a["sampled_clients"] == b["sampled_clients"]
        assert a["dp_epsilon"] == b["dp_epsilon"]
    ref_final = load_file(str(Path(reference.output_dir) / "final" / "routers.safetensors"))
    res_final = load_file(str(Path(crashed.output_dir) / "final" / "routers.safetensors"))
    for name in ref_final:
        torch.testing.assert_close(ref_final[name], res_final[name], rtol=0, atol=1e-6)
