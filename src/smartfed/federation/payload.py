"""The bytes a round sends, from shapes alone (``smartfed run --dry_run``).

Counted exactly as :class:`~smartfed.federation.strategy.SmartFedStrategy` counts a real round
(Flower's ``count_bytes`` of every record of a message): down, to each sampled client, the
global state in the wire dtype plus the round config (the method's, e.g. SmartFed's quota
table, and ``server-round``); up, from each, its update plus its metrics. An array counts its
``.npy`` bytes (header and data) plus its name, a config or metric value 8 bytes (a string its
length) plus its key. ``tests/models/test_memory.py`` checks these numbers against what a real
run records.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord

#: NumPy type each wire dtype travels as (bfloat16 as its 16-bit patterns: see :mod:`.wire`).
WIRE_NUMPY_TYPES = {"float32": "<f4", "bfloat16": "<i2", "float16": "<f2"}
#: The metrics every client reply carries besides the method's own (``client_app.train``).
REPLY_METRICS = ("num-examples", "train-loss", "tokens", "step-time-s")


@dataclass(frozen=True)
class RoundBytes:
    """Training traffic of one round, summed over the sampled clients (as metrics.jsonl)."""

    down: int
    up: int
    state: int  # the exchanged arrays alone, one copy

    @property
    def total(self) -> int:
        return self.down + self.up


def array_bytes(name: str, shape: Sequence[int], wire_dtype: str) -> int:
    """What Flower counts for one exchanged tensor: its ``.npy`` file and its name."""
    numpy_type = WIRE_NUMPY_TYPES[wire_dtype]
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": numpy_type, "fortran_order": False, "shape": tuple(shape)}
    )
    data = math.prod(shape) * np.dtype(numpy_type).itemsize
    return len(header.getvalue()) + data + len(name)


def state_bytes(shapes: Mapping[str, Sequence[int]], wire_dtype: str) -> int:
    """The exchanged state (name -> shape) as one record in ``wire_dtype``."""
    return sum(array_bytes(name, shape, wire_dtype) for name, shape in shapes.items())


def round_bytes(
    shapes: Mapping[str, Sequence[int]],
    *,
    wire_dtype: str,
    sample_clients: int,
    round_config: Mapping[str, Any],
    reply_metric_sizes: Mapping[str, int],
) -> RoundBytes:
    """Bytes of one round: ``shapes`` of the exchanged state, the method's ``round_config``
    and the sizes of its extra reply metrics (name -> number of values)."""
    state = state_bytes(shapes, wire_dtype)
    config = ConfigRecord({**dict(round_config), "server-round": 0}).count_bytes()
    sizes = {**dict.fromkeys(REPLY_METRICS, 1), **reply_metric_sizes}
    metrics = MetricRecord(
        {name: 0.0 if size == 1 else [0.0] * size for name, size in sizes.items()}
    ).count_bytes()
    return RoundBytes(
        down=sample_clients * (state + config), up=sample_clients * (state + metrics), state=state
    )
