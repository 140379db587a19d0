"""End to end on the in-process Flower engine: the run directory, EEQA, resume and faults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from smartfed.federation import client_app as smartfed_client
from smartfed.federation.runner import run_federated
from smartfed.federation.strategy import RoundFailed
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreModel

from ..conftest import make_tiny_llama
from .crashing import CrashAtRound

ROW_FIELDS = {
    "round", "train_loss", "bytes_down", "bytes_up", "wall_s", "quotas", "importance",
    "energy_kwh", "eval_loss",
}  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration  # a whole run end to end
def test_run_writes_the_whole_run_directory(tiny_run_config):
    config = tiny_run_config()
    summary = run_federated(config)
    run = Path(config.output_dir)

    saved = json.loads((run / "config.json").read_text())
    assert saved["num_rounds"] == 3 and saved["task"] == config.task

    rows = _rows(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert set(row) >= ROW_FIELDS, ROW_FIELDS - set(row)
        assert row["bytes_down"] > 0 and row["bytes_up"] > 0
        assert len(row["quotas"]) == len(row["importance"]) == 4  # 2 layers × (q, v)
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["eval_loss"])
        assert len(row["sampled_clients"]) == 2
    # Energy is cumulative.
    energies = [r["energy_kwh"] for r in rows]
    assert energies == sorted(energies)

    # Uniform K during the 1 warm-up round, then EEQA moves budget but keeps it.
    assert rows[0]["quotas"] == [3] * 4
    for row in rows[1:]:
        assert sum(row["quotas"]) == 3 * 4
        assert all(1 <= q <= 8 for q in row["quotas"])  # M = 4 + 4 experts per matrix

    # Router bytes: every sampled client uploads every router once (float32).
    router_numel = 4 * 8 * 32  # 4 matrices × M=8 experts × d_in=32
    assert rows[0]["bytes_up"] > 2 * router_numel * 4

    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["round_0002", "round_0003"]
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    assert state["round"] == 3 and len(state["server_logic"]["quotas"]) == 4

    partitions = json.loads((run / "partitions.json").read_text())
    assert sum(c["size"] for c in partitions["clients"]) == 48

    assert summary["rounds"] == 3
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["initial_eval"]["eval_loss"] > 0
    assert summary["final_eval"]["round"] == 3
    assert summary["trainable_parameters"] == router_numel
    assert summary["communicated_parameters"] == router_numel
    assert summary["method"] == "smartfed"
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["bytes_down"] == summary["bytes_down"]

    # final/ reloads for inference and reproduces the last checkpoint's routers
    pool = load_pool(config.pool_items)
    more = MoreModel.from_pretrained(make_tiny_llama(), pool, run / "final")
    final = load_file(str(checkpoints[-1] / "global_state.safetensors"))
    for name, tensor in more.router_state_dict().items():
        torch.testing.assert_close(tensor, final[name])
    assert more.get_quotas().tolist() == rows[-1]["quotas"]


@pytest.mark.integration  # a whole run end to end
def test_no_eeqa_keeps_uniform_quotas(tiny_run_config):
    config = tiny_run_config(enable_eeqa=False, num_rounds=2, eval_samples=0)
    run_federated(config)
    assert all(row["quotas"] == [3] * 4 for row in _rows(Path(config.output_dir)))


@pytest.mark.integration  # a whole run end to end
def test_resumed_run_ends_with_the_same_routers(tiny_run_config, tmp_path):
    reference = tiny_run_config(output_dir=str(tmp_path / "reference"))
    run_federated(reference)

    crashed = tiny_run_config(output_dir=str(tmp_path / "crashed"))
    with pytest.raises(KeyboardInterrupt):
        run_federated(crashed, client_app=CrashAtRound(3).app)
    assert [r["round"] for r in _rows(Path(crashed.output_dir))] == [1, 2]

    # Without --resume an existing run is never overwritten.
    with pytest.raises(Exception, match="--resume"):
        run_federated(crashed)

    from dataclasses import replace

    run_federated(replace(crashed, resume=True))
    ref_rows, res_rows = _rows(Path(reference.output_dir)), _rows(Path(crashed.output_dir))
    assert [r["round"] for r in res_rows] == [1, 2, 3]
    for a, b in zip(ref_rows, res_rows, strict=True):
        assert a["quotas"] == b["quotas"]
        assert a["sampled_clients"] == b["sampled_clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    ref_final = load_file(str(Path(reference.output_dir) / "final" / "routers.safetensors"))
    res_final = load_file(str(Path(crashed.output_dir) / "final" / "routers.safetensors"))
    assert ref_final.keys() == res_final.keys()
    for name in ref_final:
        torch.testing.assert_close(ref_final[name], res_final[name], rtol=0, atol=1e-6)


class _FaultyClients:
    """Client 1 raises, client 2 returns NaN routers; the others train normally."""

    def __init__(self):
        self.app = ClientApp()
        self.app.train()(self.train)

    def train(self, msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        if partition == 1:
            raise RuntimeError("disk full")
        reply = smartfed_client.train(msg, context)
        if partition == 2:
            arrays = reply.content["arrays"]
            state = arrays.to_torch_state_dict()
            first = next(iter(state))
            state[first][0, 0] = float("nan")
            from flwr.app import ArrayRecord

            reply.content["arrays"] = ArrayRecord(state)
        return reply


@pytest.mark.integration  # a whole run end to end
def test_failing_and_nan_clients_are_dropped_with_a_reason(tiny_run_config):
    config = tiny_run_config(num_clients=3, sample_clients=3, num_rounds=2, min_replies=1)
    run_federated(config, client_app=_FaultyClients().app)
    rows = _rows(Path(config.output_dir))
    for row in rows:
        reasons = sorted(row["dropped_clients"].values())
        assert len(reasons) == 2
        assert "disk full" in reasons[0] or "disk full" in reasons[1]
        assert any("NaN" in r for r in reasons)
        assert np.isfinite(row["train_loss"])


def test_round_fails_clearly_when_too_few_replies_remain(tiny_run_config):
    config = tiny_run_config(num_clients=3, sample_clients=3, num_rounds=1, min_replies=2)
    with pytest.raises(RoundFailed, match=r"1 usable client replies of 3 sampled, need at least 2"):
        run_federated(config, client_app=_FaultyClients().app)


@pytest.mark.integration  # a whole run end to end
def test_unmeasured_energy_is_reported_as_unknown_not_zero(tiny_run_config, monkeypatch):
    from smartfed.telemetry import EnergyMeter

    real_stop = EnergyMeter.stop

    def failed_stop(self):  # stop CodeCarbon's threads for real, then report no reading
        real_stop(self)
        return None

    monkeypatch.setattr(EnergyMeter, "cumulative_kwh", lambda self: None)
    monkeypatch.setattr(EnergyMeter, "stop", failed_stop)
    config = tiny_run_config(num_rounds=2)
    summary = run_federated(config)
    assert [r["energy_kwh"] for r in _rows(Path(config.output_dir))] == [None, None]
    assert summary["energy_kwh"] is None
