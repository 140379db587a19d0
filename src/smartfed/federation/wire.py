"""Wire precision of exchanged tensors (``--wire_dtype``): encode to send, decode to float32.

Both directions carry the method's state in the run's wire dtype: a client casts its update,
the server casts the global state it sends. Whatever arrives is decoded to float32 before use:
the server averages in float32 and keeps its global state (and checkpoints) in float32; a
client loads the received state into its float32 parameters. Only floating-point tensors are
cast; any other tensor travels as it is.

float32 and float16 travel as Flower's own NumPy arrays. NumPy has no bfloat16, so a bfloat16
tensor travels as the .npy of its 16-bit patterns (the same framing as a NumPy array, so its
byte count is exactly half the float32 array's data plus the same header) in an ``Array`` with
``dtype="bfloat16"`` and its own ``stype``: Flower's ``Array.numpy()`` refuses it rather than
hand out the raw bits as integers. With the default float32 every record is the one sent
before this setting existed, so bytes and results are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from smartfed.engine.config import WIRE_DTYPES

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
assert set(TORCH_DTYPES) == set(WIRE_DTYPES)
BFLOAT16_STYPE = "smartfed.bfloat16-bits.npy"


def _bfloat16_array(tensor: torch.Tensor) -> Array:
    buffer = BytesIO()
    np.save(buffer, tensor.contiguous().view(torch.int16).numpy(), allow_pickle=False)
    return Array(
        dtype="bfloat16", shape=tuple(tensor.shape), stype=BFLOAT16_STYPE, data=buffer.getvalue()
    )


def to_wire(state: Mapping[str, torch.Tensor], wire_dtype: str) -> ArrayRecord:
    """The record that sends ``state`` with its floating tensors cast to ``wire_dtype``."""
    if wire_dtype == "float32":
        return ArrayRecord(dict(state))  # exactly what was sent before wire_dtype existed
    target = TORCH_DTYPES[wire_dtype]
    arrays: dict[str, Array] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(target)
        arrays[name] = _bfloat16_array(tensor) if tensor.dtype == torch.bfloat16 else Array(tensor)
    return ArrayRecord(arrays)


def _decode(array: Array) -> torch.Tensor:
    if array.stype == BFLOAT16_STYPE:
        bits = np.load(BytesIO(array.data), allow_pickle=False)
        if bits.dtype != np.int16 or tuple(bits.shape) != tuple(array.shape):
            raise ValueError(f"malformed bfloat16 array (bits {bits.dtype}{list(bits.shape)})")
        return torch.from_numpy(bits).view(torch.bfloat16).to(torch.float32)
    tensor = torch.from_numpy(array.numpy())
    return tensor.to(torch.float32) if tensor.is_floating_point() else tensor


def from_wire(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The received state with its floating tensors in float32 (float32 ones as they came)."""
    return {name: _decode(array) for name, array in record.items()}


def as_float32(record: ArrayRecord) -> ArrayRecord:
    """``record`` with floating arrays in float32: the record itself if they already are."""
    if not any(array.dtype in ("bfloat16", "float16", "float64") for array in record.values()):
        return record
    return ArrayRecord(from_wire(record))


def recast(record: ArrayRecord, wire_dtype: str) -> ArrayRecord:
    """The server's float32 ``record`` as sent in ``wire_dtype`` (itself for float32)."""
    if wire_dtype == "float32":
        return record
    return to_wire(from_wire(record), wire_dtype)
