"""Devices, dtypes, autocast, 4-bit refusal and gradient checkpointing (smartfed.models)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from peft import LoraConfig, get_peft_model

from smartfed.errors import ConfigError
from smartfed.models import (
    autocast,
    check_load_in_4bit,
    dtype_name,
    enable_gradient_checkpointing,
    load_base_model,
    model_autocast,
    model_device,
    model_dtype,
    resolve_device,
    to_device,
    torch_dtype,
)
from smartfed.models import device as device_module
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama


def test_dtype_names_round_trip_and_bad_names_are_one_line():
    for name in ("float32", "bfloat16", "float16"):
        assert dtype_name(torch_dtype(name)) == name
    with pytest.raises(ConfigError) as error:
        torch_dtype("float64")
    assert "\n" not in str(error.value) and "--dtype 'float64'" in str(error.value)


def test_auto_and_cpu_resolve_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_line(spec, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        resolve_device(spec)
    message = str(error.value)
    assert "\n" not in message and f"--device {spec}: CUDA is not available" in message


def test_a_gpu_index_beyond_the_machine_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"has 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CPU", ""])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda, cuda:N"):
        resolve_device(spec)


def test_autocast_only_where_the_device_supports_the_half_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    # float32 never autocasts: float32 runs compute exactly as before.
    assert isinstance(autocast(cpu, torch.float32), nullcontext)
    assert isinstance(autocast(cuda, torch.float32), nullcontext)
    assert isinstance(autocast(cpu, torch.float16), nullcontext)  # no CPU float16 autocast
    assert isinstance(autocast(torch.device("mps"), torch.bfloat16), nullcontext)
    assert isinstance(autocast(cpu, torch.bfloat16), torch.autocast)
    assert device_module.autocast_dtype(cuda, torch.float16) == torch.float16
    assert device_module.autocast_dtype(cuda, torch.bfloat16) == torch.bfloat16


def test_model_device_and_dtype_follow_the_base_weights():
    model = make_tiny_llama()
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.float32
    assert isinstance(model_autocast(model), nullcontext)
    model.to(torch.bfloat16)
    assert model_dtype(model) == torch.bfloat16
    with model_autocast(model):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"] is batch["input_ids"] and moved["note"] == "kept"


def test_load_in_4bit_is_refused_in_one_line_off_cuda_or_without_bitsandbytes(monkeypatch):
    with pytest.raises(ConfigError) as error:
        check_load_in_4bit(torch.device("cpu"))
    assert "\n" not in str(error.value) and "--load_in_4bit needs a CUDA device" in str(error.value)
    monkeypatch.setattr(device_module, "_installed", lambda name: name != "bitsandbytes")
    with pytest.raises(ConfigError) as error:
        check_load_in_4bit(torch.device("cuda", 0))
    message = str(error.value)
    assert "\n" not in message and "--load_in_4bit needs bitsandbytes, not installed" in message


def test_load_base_model_refuses_4bit_on_the_cpu(tiny_model_dir):
    with pytest.raises(ConfigError, match="--load_in_4bit needs a CUDA device"):
        load_base_model(str(tiny_model_dir), load_in_4bit=True, device="cpu")


def test_load_base_model_in_bfloat16_with_gradient_checkpointing(tiny_model_dir):
    loaded = load_base_model(
        str(tiny_model_dir), dtype="bfloat16", device="cpu", gradient_checkpointing=True
    )
    model = loaded.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert _checkpointing(model)
    plain = load_base_model(str(tiny_model_dir))
    assert {p.dtype for p in plain.model.parameters()} == {torch.float32}
    assert not _checkpointing(plain.model)


def _checkpointing(model) -> bool:
    # transformers >= 5.2x: is_activation_checkpointing (the old name warns); older: the old.
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def _more_step(pool, input_ids, *, checkpointing: bool, score: str):
    base = make_tiny_llama()
    if checkpointing:
        enable_gradient_checkpointing(base)
    torch.manual_seed(0)
    more = MoreModel(base, pool, MoreConfig(top_k=3, importance_score=score))
    more.train()
    more.track_importance(True)
    loss = more(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in more.trainable_parameters().items()}
    return loss.detach(), grads, more.read_importance()


@pytest.mark.parametrize("score", ["cosine", "taylor"])
def test_gradient_checkpointing_changes_neither_gradients_nor_importance(
    score, make_adapter, input_ids
):
    """Adapters on a frozen, checkpointed base still get their gradients (input grads on,
    non-reentrant). The recomputed forward counts the forward statistics a second time, but
    every importance value is a ratio of them, so none changes."""
    pool = load_pool([str(make_adapter("a", seed=0)), str(make_adapter("b", seed=1))])
    loss, grads, stats = _more_step(pool, input_ids, checkpointing=False, score=score)
    loss_ckpt, grads_ckpt, stats_ckpt = _more_step(pool, input_ids, checkpointing=True, score=score)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7)
    np_close = torch.testing.assert_close
    np_close(torch.tensor(stats_ckpt.matrix), torch.tensor(stats.matrix), rtol=1e-6, atol=0)
    for gates, gates_ckpt in zip(stats.mean_gate, stats_ckpt.mean_gate, strict=True):
        np_close(torch.tensor(gates_ckpt), torch.tensor(gates), rtol=1e-6, atol=0)


def test_a_fresh_lora_trains_on_a_checkpointed_bfloat16_base():
    base = make_tiny_llama().to(torch.bfloat16)
    base.requires_grad_(False)
    enable_gradient_checkpointing(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}  # PEFT upcasts
    model.train()
    ids = torch.randint(0, 200, (2, 7), generator=torch.Generator().manual_seed(0))
    with model_autocast(model):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in lora.items() if "lora_A" in n]  # B = 0: A's grad is 0 too
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(lora[n].grad is not None and lora[n].grad.abs().sum() > 0
               for n in lora if "lora_B" in n)  # fmt: skip


def test_half_dtype_on_a_cpu_without_native_matmul_warns_once_with_the_measured_slowdown(
    monkeypatch, caplog, tiny_run_config
):
    from smartfed.assembly.runtime import load_run_model

    times = {torch.float32: 0.002, torch.bfloat16: 0.017, torch.float16: 0.031}
    measured: list[torch.dtype] = []

    def fake_time(dtype, *args, **kwargs):
        measured.append(dtype)
        return times[dtype]

    monkeypatch.setattr(device_module, "time_matmul", fake_time)
    monkeypatch.setattr(device_module, "cpu_has_native_half", lambda dtype: False)
    monkeypatch.setattr(device_module, "_warned_dtypes", set())
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger=device_module.__name__):
        load_run_model(tiny_run_config(dtype="bfloat16", device="cpu"))
        # Once per process: a second model load in the same dtype does not measure again.
        assert device_module.warn_if_slow_half_on_cpu(cpu, "bfloat16") is None
        fp16 = device_module.warn_if_slow_half_on_cpu(cpu, "float16")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1] == fp16
    assert "\n" not in lines[0]
    assert lines[0].startswith("--dtype bfloat16: this CPU has no native bfloat16 matmul")
    assert "measured 8.5x the time of float32" in lines[0]
    assert "15.5x" in fp16
    assert measured == [torch.float32, torch.bfloat16, torch.float32, torch.float16]


def test_no_slowdown_warning_where_half_matmuls_are_native_or_not_used(monkeypatch):
    def must_not_time(*args, **kwargs):
        raise AssertionError("measured without need")

    monkeypatch.setattr(device_module, "time_matmul", must_not_time)
    monkeypatch.setattr(device_module, "_warned_dtypes", set())
    warn = device_module.warn_if_slow_half_on_cpu
    assert warn(torch.device("cpu"), "float32") is None
    assert warn(torch.device("cuda", 0), "bfloat16") is None
    monkeypatch.setattr(device_module, "cpu_has_native_half", lambda dtype: True)
    assert warn(torch.device("cpu"), "bfloat16") is None


def test_the_real_matmul_timer_is_cheap():
    # Whatever this CPU supports, the measurement itself stays small.
    assert 0 < device_module.time_matmul(torch.float32) < 0.5
    assert isinstance(device_module.cpu_has_native_half(torch.bfloat16), bool)
