"""Where the model runs and in what precision: devices, dtypes, autocast, 4-bit loading.

The frozen base model and the pool experts take the run's ``--dtype``; everything that trains
(routers, a fresh LoRA's A and B, gates, the residual LoRA) stays float32. The tuners cast
between the two explicitly; :func:`autocast` adds ``torch.autocast`` where the device supports
the base dtype (CUDA: bfloat16 and float16; CPU: bfloat16), so any other mixed-dtype operation
also computes in the base dtype. A float32 model gets no autocast at all: float32 runs compute
exactly as they did before these settings existed.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from smartfed.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_DTYPES = (torch.bfloat16, torch.float16)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name (float32, bfloat16, float16)."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The ``--dtype`` name of a torch dtype (the inverse of :func:`torch_dtype`)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")


def resolve_device(spec: str = "auto") -> torch.device:
    """The device of a ``--device`` value: auto (CUDA if available, else CPU), cpu, cuda,
    cuda:N or mps. A device this machine lacks is a one-line ConfigError."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                "--device mps: the Apple GPU (MPS) is not available here; use --device cpu or auto"
            )
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec or "")
    if match is None:
        raise ConfigError(
            f"--device {spec!r}: expected auto, cpu, cuda, cuda:N (N a GPU index) or mps"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {spec}: CUDA is not available (torch {torch.__version__}, "
            f"{'no CUDA build' if torch.version.cuda is None else 'no GPU found'}); "
            "use --device cpu or auto"
        )
    index = int(match.group(1)) if match.group(1) else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {spec}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def autocast_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs in for a base model in ``dtype`` on ``device``, or
    None where no autocast applies (float32, and half types the device's autocast lacks)."""
    if dtype not in HALF_DTYPES:
        return None
    if device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16):
        return dtype
    return None


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """``torch.autocast`` for a base model in ``dtype`` on ``device``; a no-op context where
    :func:`autocast_dtype` is None (always for float32)."""
    chosen = autocast_dtype(device, dtype)
    if chosen is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=chosen)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The precision of the frozen base weights: the half dtype some parameter holds, else
    float32 (trainable parameters are float32 whatever the base dtype)."""
    for param in model.parameters():
        if param.dtype in HALF_DTYPES:
            return param.dtype
    return torch.float32


def model_autocast(model: nn.Module) -> AbstractContextManager:
    """:func:`autocast` for ``model`` where it lives, in the precision of its base weights."""
    return autocast(model_device(model), model_dtype(model))


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (the same tensors when already there)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def check_load_in_4bit(device: torch.device) -> None:
    """Refuse ``--load_in_4bit`` in one line unless the device is CUDA and bitsandbytes (with
    accelerate, which transformers needs for it) is installed."""
    if device.type != "cuda":
        raise ConfigError(
            f"--load_in_4bit needs a CUDA device (bitsandbytes), but the device is {device}; "
            "drop --load_in_4bit or run on a GPU"
        )
    missing = [name for name in ("bitsandbytes", "accelerate") if not _installed(name)]
    if missing:
        raise ConfigError(
            f"--load_in_4bit needs {' and '.join(missing)}, not installed: "
            f"pip install {' '.join(missing)}"
        )


# A matmul small enough that the float32 one takes well under a millisecond and an emulated
# half-precision one a few milliseconds: cheap to measure at start.
SLOWDOWN_MATMUL_SIZE = 128
_warned_dtypes: set[torch.dtype] = set()  # one warning per process and dtype


def cpu_has_native_half(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` matrices natively (oneDNN's own check: AVX512-BF16
    or AMX for bfloat16, AVX512-FP16 or AMX-FP16 for float16); False when torch cannot tell."""
    checks = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }
    try:
        return bool(getattr(torch.ops.mkldnn, checks[dtype])())
    except (KeyError, AttributeError, RuntimeError):
        return False


def time_matmul(dtype: torch.dtype, size: int = SLOWDOWN_MATMUL_SIZE, repeats: int = 3) -> float:
    """Seconds of one ``size`` x ``size`` matmul in ``dtype`` on the CPU (the best of
    ``repeats``, after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    a @ b  # warm-up: first-call dispatch and allocation are not the matmul
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best


def warn_if_slow_half_on_cpu(device: torch.device, dtype_name: str) -> str | None:
    """Warn once (and return the line) when ``--dtype`` is a half type on a CPU that lacks
    native matmuls for it: torch then emulates them, and a run is slower than in float32,
    not faster. The slowdown is measured on a small matmul rather than assumed."""
    dtype = torch_dtype(dtype_name)
    if device.type != "cpu" or dtype not in HALF_DTYPES or dtype in _warned_dtypes:
        return None
    if cpu_has_native_half(dtype):
        return None
    _warned_dtypes.add(dtype)
    reference = max(time_matmul(torch.float32), 1e-9)
    ratio = time_matmul(dtype) / reference
    size = SLOWDOWN_MATMUL_SIZE
    message = (
        f"--dtype {dtype_name}: this CPU has no native {dtype_name} matmul, so torch emulates it; "
        f"a {size}x{size} matmul measured {ratio:.1f}x the time of float32 here "
        "(--dtype float32 is likely faster on this machine)"
    )
    log.warning(message)
    return message


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
