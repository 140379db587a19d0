"""--dtype, --device and --gradient_checkpointing end to end: a bfloat16 base with float32
trainables, CPU float32 states, resume on another device, and the one-line refusals (CUDA
missing, 4-bit, dtype on resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from smartfed.assembly.runtime import get_runtime
from smartfed.bench.runner import _check_same_bench
from smartfed.cli.main import main
from smartfed.engine.training import train_local
from smartfed.errors import ConfigError
from smartfed.federation.runner import run_federated

from .crashing import CrashAtRound

# A bfloat16 base keeps ~3 significant digits: the tiny run's eval losses (~5.5) may move by
# this much from the float32 run's (absolute). Measured: 2e-4 before training, at most 1.4e-2
# after 3 rounds.
BF16_LOSS_TOLERANCE = 0.05


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _safetensors_dtypes(path: Path) -> set[torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_tensor(k).dtype for k in handle.keys()}  # noqa: SIM118 (not a dict)


@pytest.mark.integration  # a whole run end to end
def test_bfloat16_run_keeps_the_base_in_bfloat16_and_trainables_in_float32(
    tiny_run_config, tmp_path
):
    losses = {}
    for label, dtype, checkpointing, rounds in (
        ("checkpointed", "float32", True, 1),
        ("float32", "float32", False, 3),
        ("bfloat16", "bfloat16", False, 3),
    ):
        config = tiny_run_config(
            dtype=dtype,
            device="cpu",
            gradient_checkpointing=checkpointing,
            num_rounds=rounds,
            output_dir=str(tmp_path / label),
        )
        summary = run_federated(config)
        run = Path(config.output_dir)
        losses[label] = [summary["initial_eval"]["eval_loss"]] + [
            r["eval_loss"] for r in _rows(run)
        ]
        assert summary["device"] == "cpu" and summary["dtype"] == dtype
        assert json.loads((run / "summary.json").read_text())["dtype"] == dtype
        saved = json.loads((run / "config.json").read_text())
        assert saved["dtype"] == dtype and saved["device"] == "cpu"

    # The runtime of the last (bfloat16) run is still cached: look at its weights.
    more = get_runtime(config).method.model
    base = more.model
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    layer = more.tuner_layers()["model.layers.0.self_attn.q_proj"]
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert layer.expert_A.dtype == layer.expert_B.dtype == torch.bfloat16
    trainables = more.trainable_parameters()
    assert trainables and {p.dtype for p in trainables.values()} == {torch.float32}

    # Checkpoints and the final routers stay float32.
    run16 = tmp_path / "bfloat16"
    files = [*sorted(run16.glob("checkpoints/*/global_state.safetensors"))]
    files.append(run16 / "final" / "routers.safetensors")
    for file in files:
        assert _safetensors_dtypes(file) == {torch.float32}, file

    # Close to the float32 run, but really another precision.
    assert losses["bfloat16"] == pytest.approx(losses["float32"], abs=BF16_LOSS_TOLERANCE)
    assert losses["bfloat16"] != losses["float32"]
    # Recomputing activations changes memory, not results.
    assert losses["checkpointed"] == pytest.approx(losses["float32"][:2], rel=1e-6)

    # `smartfed eval --run` rebuilds the run in its own dtype unless told otherwise.
    for flags, dtype in (([], "bfloat16"), (["--dtype", "float32"], "float32")):
        out = tmp_path / f"eval-{dtype}.json"
        argv = ["eval", "--benchmark", "loss", "--run", str(run16), "--device", "cpu"]
        assert main([*argv, *flags, "--output", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["model"]["dtype"] == dtype and result["model"]["device"] == "cpu"
        assert result["value"] == pytest.approx(losses["bfloat16"][-1], abs=BF16_LOSS_TOLERANCE)


@pytest.mark.parametrize("method", ["fedit", "mole", "lorahub"])
def test_every_kind_of_method_trains_on_a_bfloat16_base(method, tiny_run_config):
    """PEFT's fresh LoRA (fedit), MoLE's routers and LoRAHub's weights: float32 trainables on a
    bfloat16 base train under CPU autocast, and the exchanged state is CPU float32."""
    config = tiny_run_config(method=method, dtype="bfloat16")
    runtime = get_runtime(config)
    method_obj = runtime.method
    trainables = method_obj.trainable_parameters()
    assert trainables and {p.dtype for p in trainables.values()} == {torch.float32}
    half = [p for p in method_obj.model.parameters() if p.dtype == torch.bfloat16]
    assert half and not any(p.requires_grad for p in half)

    before = runtime.initial_global_state
    stream = runtime.client_batches(0, 1)
    update = train_local(
        method_obj,
        (stream.next_batch() for _ in range(3)),
        global_state=before,
        local_state=runtime.initial_local_state,
        round_config={},
        local_steps=3,
        learning_rate=5e-2,
        num_examples=1,
        seed=0,
    )
    assert torch.isfinite(torch.tensor(update.train_loss))
    for name, tensor in update.global_state.items():
        assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, name
    changed = [n for n in before if not torch.equal(before[n], update.global_state[n])]
    assert changed, "training changed no exchanged tensor"


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.integration  # a whole run end to end
def test_resume_may_change_the_device_but_not_the_dtype(tiny_run_config, tmp_path, capsys):
    crashed = tiny_run_config(device="cpu", output_dir=str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        run_federated(crashed, client_app=CrashAtRound(3).app)
    run = Path(crashed.output_dir)
    assert [r["round"] for r in _rows(run)] == [1, 2]

    # Numerics may not change mid-run: refused in one line, before any work.
    for flags in (["--dtype", "bfloat16"], ["--load_in_4bit"]):
        capsys.readouterr()
        assert main(["run", "--resume", str(run), *flags]) == 1
        line = _one_error_line(capsys)
        assert f"{flags[0]} cannot be given with --resume" in line
    assert [r["round"] for r in _rows(run)] == [1, 2]

    # Another device spec is accepted (on this machine, auto is the CPU again).
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--device", "auto"]) == 0, capsys.readouterr().err
    assert [r["round"] for r in _rows(run)] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["device"] == "auto"
    summary = json.loads((run / "summary.json").read_text())
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert summary["device"] == expected and summary["dtype"] == "float32"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--load_in_4bit", "--device", "cpu"], "--load_in_4bit needs a CUDA device"),
        (["--device", "gpu"], "--device 'gpu': expected auto, cpu, cuda, cuda:N"),
        (["--dtype", "float64"], "invalid choice: 'float64'"),
    ],
)
def test_bad_hardware_settings_fail_in_one_line(flags, fragment, capsys, tmp_path):
    code = None
    try:
        code = main(["run", *flags, "--output_dir", str(tmp_path / "run")])
    except SystemExit as exit_info:  # argparse's own refusals
        code = exit_info.code
    assert code in (1, 2)
    # argparse prints its usage first; SmartFed's refusals are the one line alone.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and fragment in errors[0], errors
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_fails_in_one_line(capsys, tmp_path):
    assert main(["run", "--device", "cuda", "--output_dir", str(tmp_path / "run")]) == 1
    line = _one_error_line(capsys)
    assert "--device cuda: CUDA is not available" in line and "use --device cpu or auto" in line


def test_a_bench_continues_on_another_device_but_not_in_another_dtype(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"settings": {"device": "cpu", "dtype": "float32"}}))
    _check_same_bench(path, {"settings": {"device": "auto", "gradient_checkpointing": True}})
    with pytest.raises(ConfigError, match=r"other settings \(dtype: 'float32' there"):
        _check_same_bench(path, {"settings": {"device": "cpu", "dtype": "bfloat16"}})
