"""--wire_dtype: what travels is cast (and counted) in the wire dtype; the server stays float32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord
from safetensors import safe_open

from smartfed.cli.main import main
from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.federation.runner import run_federated
from smartfed.federation.wire import as_float32, from_wire, recast, to_wire

# Eval losses of the bfloat16 run may differ from the float32 run's by this much (absolute; the
# tiny run's losses are ~5.5, so 0.1 %). Measured: ~3e-4 after 3 rounds.
LOSS_TOLERANCE = 5e-3


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "layer.router.weight": torch.randn(8, 32, generator=generator),
        "layer.output_scale": torch.tensor(3.0),
        "layer.counter": torch.arange(3),  # not floating: never cast
    }


def test_float32_sends_exactly_what_was_sent_before():
    """The default changes nothing: the same arrays, bytes and tensors as ArrayRecord(state)."""
    state = _state()
    before = ArrayRecord(state)
    sent = to_wire(state, "float32")
    assert list(sent) == list(before)
    for name in before:
        assert sent[name].data == before[name].data and sent[name].dtype == before[name].dtype
    assert sent.count_bytes() == before.count_bytes()
    assert recast(before, "float32") is before and as_float32(before) is before
    for name, tensor in from_wire(before).items():
        assert torch.equal(tensor, state[name]) and tensor.dtype == state[name].dtype


@pytest.mark.parametrize(("wire_dtype", "torch_dtype"),
                         [("bfloat16", torch.bfloat16), ("float16", torch.float16)])  # fmt: skip
def test_half_precision_halves_the_array_bytes_and_decodes_to_float32(wire_dtype, torch_dtype):
    state = _state()
    before, sent = ArrayRecord(state), to_wire(state, wire_dtype)
    for name in ("layer.router.weight", "layer.output_scale"):
        numel = state[name].numel()
        # Same framing (.npy header), half the data: 2 bytes a value instead of 4.
        assert len(before[name].data) - len(sent[name].data) == 2 * numel
        assert sent[name].dtype == wire_dtype
    assert sent["layer.counter"].data == before["layer.counter"].data
    decoded = from_wire(sent)
    for name, tensor in decoded.items():
        original = state[name]
        if original.is_floating_point():
            assert tensor.dtype == torch.float32
            torch.testing.assert_close(tensor, original.to(torch_dtype).float(), rtol=0, atol=0)
        else:
            assert torch.equal(tensor, original)
    assert not torch.equal(decoded["layer.router.weight"], state["layer.router.weight"])
    # The server's view of a reply: float32 arrays FedAvg can average.
    assert {a.dtype for a in as_float32(sent).values()} == {"float32", "int64"}


def test_bfloat16_is_not_readable_as_plain_numpy():
    """NumPy has no bfloat16: reading the raw 16-bit patterns as numbers must fail, not lie."""
    with pytest.raises(TypeError):
        to_wire(_state(), "bfloat16")["layer.router.weight"].numpy()


@pytest.mark.integration  # a whole run end to end
def test_bfloat16_run_sends_half_the_array_bytes_and_keeps_float32(tiny_run_config, tmp_path):
    runs = {}
    for wire_dtype in ("float32", "bfloat16"):
        config = tiny_run_config(wire_dtype=wire_dtype, output_dir=str(tmp_path / wire_dtype))
        runs[wire_dtype] = (run_federated(config), _rows(Path(config.output_dir)))
    (summary32, rows32), (summary16, rows16) = runs["float32"], runs["bfloat16"]
    assert summary32["wire_dtype"] == "float32" and summary16["wire_dtype"] == "bfloat16"
    on_disk = json.loads((tmp_path / "bfloat16" / "summary.json").read_text())
    assert on_disk["wire_dtype"] == "bfloat16"

    # Bytes: every message carries the N communicated values at 2 bytes instead of 4, with the
    # same overhead (npy headers, keys, config and metrics records), so per round each direction
    # saves exactly 2 bytes × N × (messages). Same seed: the same clients are sampled.
    numel = summary32["communicated_parameters"]
    assert numel == summary16["communicated_parameters"] == 4 * 8 * 32
    for row32, row16 in zip(rows32, rows16, strict=True):
        messages = len(row16["sampled_clients"])
        assert row32["sampled_clients"] == row16["sampled_clients"] and messages == 2
        assert row32["bytes_up"] - row16["bytes_up"] == messages * 2 * numel
        assert row32["bytes_down"] - row16["bytes_down"] == messages * 2 * numel
        # What is left besides the values is the same overhead in both runs.
        overhead_up = row32["bytes_up"] - messages * 4 * numel
        assert row16["bytes_up"] == messages * 2 * numel + overhead_up
        assert 0.5 < row16["bytes_up"] / row32["bytes_up"] < 0.6

    # Results: close to float32's, but not the same run.
    losses32 = [r["eval_loss"] for r in rows32]
    losses16 = [r["eval_loss"] for r in rows16]
    assert losses16 == pytest.approx(losses32, abs=LOSS_TOLERANCE)
    assert losses16 != losses32

    # The server keeps float32: checkpoints and the final routers.
    run16 = tmp_path / "bfloat16"
    files = sorted(run16.glob("checkpoints/*/global_state.safetensors"))
    files.append(run16 / "final" / "routers.safetensors")
    assert len(files) >= 2
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            dtypes = {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118
        assert dtypes == {torch.float32}, (file, dtypes)


def test_bad_wire_dtype_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--wire_dtype", "float64"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert "--wire_dtype" in errors[0] and "invalid choice: 'float64'" in errors[0]
    # TOML files and Flower run configs go through the same check, also in one line.
    with pytest.raises(ConfigError) as error:
        RunConfig(wire_dtype="float64")
    assert "\n" not in str(error.value) and "--wire_dtype must be one of" in str(error.value)
