"""Robust aggregators: one registry entry each, numpy in and numpy out.

Semantics (the same for model payloads and for SmartFed's importance vectors):

- ``fedavg``: the mean weighted by each client's weight (its training examples for payloads,
  its tokens for importance). No defence: one client can move it anywhere.
- ``median``: the coordinate-wise median, unweighted (Yin et al., 2018). Needs 3 clients: a
  median of 2 is their mean.
- ``trimmed_mean``: per coordinate, the ``int(trim_fraction * n)`` lowest and highest values are
  dropped and the rest averaged, unweighted (Yin et al., 2018). Needs enough clients that at
  least one is cut from each end.
- ``krum``: the value of the one client whose summed squared distance to its ``n - f - 2``
  nearest others is smallest (Blanchard et al., 2017), ``f = krum_byzantine``; needs
  ``n >= 2f + 3``.

All four commute with shifting every value by the same vector, so aggregating client states is
the same as aggregating their updates (state - global) and adding the global state back.

``clip_update_norm`` C bounds each client before any aggregator: its update (payload minus the
global state it was sent, all arrays as one vector) is scaled down to L2 norm C when longer,
and left as it is otherwise. Weights are not clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from smartfed.errors import ConfigError

DEFAULT_TRIM_FRACTION = 0.2  # Flower's FedTrimmedAvg default: 1 of 5 cut from each end
DEFAULT_KRUM_BYZANTINE = 1


@dataclass(frozen=True)
class AggregationRule:
    """How the server combines the clients: an aggregator, its knobs and the update clip."""

    name: str = "fedavg"
    trim_fraction: float = DEFAULT_TRIM_FRACTION
    krum_byzantine: int = DEFAULT_KRUM_BYZANTINE
    clip_update_norm: float | None = None

    @property
    def aggregator(self) -> Aggregator:
        return get_aggregator(self.name)

    @property
    def min_clients(self) -> int:
        """Fewest clients this rule can act on (below it, it would not resist one attacker)."""
        return self.aggregator.min_clients(self)

    @property
    def requirement(self) -> str:
        """Why :attr:`min_clients` is the minimum, for error messages."""
        return self.aggregator.requirement(self)

    def reduce(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Combine ``values`` (clients stacked on axis 0) with per-client ``weights``."""
        values = np.asarray(values, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if values.ndim < 1 or len(values) == 0 or weights.shape != (len(values),):
            raise ValueError(
                f"aggregate: {values.shape[:1]} client values but weights of shape {weights.shape}"
            )
        return self.aggregator.reduce(values, weights, self)

    def flower_strategy(self) -> tuple[str, dict[str, Any]]:
        """The class in ``flwr.serverapp.strategy`` that aggregates payloads, and its options."""
        entry = self.aggregator
        return entry.flower_strategy, entry.flower_options(self)

    def describe(self) -> str:
        parts = [self.name]
        parts += [f"{k} {v:g}" for k, v in self.aggregator.knobs(self).items()]
        if self.clip_update_norm is not None:
            parts.append(f"updates clipped to L2 norm {self.clip_update_norm:g}")
        return ", ".join(parts)


Reduce = Callable[[np.ndarray, np.ndarray, AggregationRule], np.ndarray]


@dataclass(frozen=True)
class Aggregator:
    name: str
    summary: str
    reduce: Reduce  # (values stacked on axis 0 as float64, weights, rule) -> combined value
    min_clients: Callable[[AggregationRule], int]
    requirement: Callable[[AggregationRule], str]
    flower_strategy: str  # class name in flwr.serverapp.strategy (used by federation/ only)
    flower_options: Callable[[AggregationRule], dict[str, Any]]
    knobs: Callable[[AggregationRule], dict[str, float]]  # the rule's settings it reads


AGGREGATORS: dict[str, Aggregator] = {}


def _register(entry: Aggregator) -> None:
    AGGREGATORS[entry.name] = entry


def get_aggregator(name: str) -> Aggregator:
    if name not in AGGREGATORS:
        raise ConfigError(f"--aggregation {name!r}: expected one of {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name]


# ---------------------------------------------------------------------------- the reducers
def weighted_average(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i v_i / sum_i w_i`` over axis 0; weights are scaled by their largest first so
    huge counts cannot overflow. Weights must be >= 0 and not all zero."""
    peak = float(weights.max())
    if peak <= 0 or (weights < 0).any():
        raise ValueError(f"aggregate: weights must be >= 0 and not all 0, got {weights.tolist()}")
    scaled = weights / peak
    return np.tensordot(scaled / scaled.sum(), values, axes=1)


def trimmed_cut(trim_fraction: float, n: int) -> int:
    """Values dropped from each end of every coordinate among ``n`` (as Flower's trim_mean)."""
    return int(trim_fraction * n)


def trimmed_mean(values: np.ndarray, trim_fraction: float) -> np.ndarray:
    cut = trimmed_cut(trim_fraction, len(values))
    ordered = np.sort(values, axis=0)
    return ordered[cut : len(values) - cut].mean(axis=0)


def krum_index(values: np.ndarray, byzantine: int) -> int:
    """The client whose summed squared distance to its ``n - f - 2`` nearest others is least
    (at least 1 neighbour; ties: the lower index)."""
    flat = values.reshape(len(values), -1)
    n = len(flat)
    if n == 1:
        return 0
    neighbours = max(1, n - byzantine - 2)
    scores = []
    for i in range(n):
        distances = np.delete(((flat - flat[i]) ** 2).sum(axis=1), i)
        scores.append(float(np.sort(distances)[:neighbours].sum()))
    return int(np.argmin(scores))


def _trimmed_min_clients(rule: AggregationRule) -> int:
    n = max(1, math.ceil(1.0 / rule.trim_fraction) - 1)
    while trimmed_cut(rule.trim_fraction, n) < 1:  # float rounding: settle on the exact n
        n += 1
    return n


_register(
    Aggregator(
        name="fedavg",
        summary="mean weighted by examples (payloads) or tokens (importance); no defence",
        reduce=lambda values, weights, rule: weighted_average(values, weights),
        min_clients=lambda rule: 1,
        requirement=lambda rule: "",
        flower_strategy="FedAvg",
        flower_options=lambda rule: {},
        knobs=lambda rule: {},
    )
)
_register(
    Aggregator(
        name="median",
        summary="coordinate-wise median, unweighted",
        reduce=lambda values, weights, rule: np.median(values, axis=0),
        min_clients=lambda rule: 3,
        requirement=lambda rule: "a median of 2 is their mean",
        flower_strategy="FedMedian",
        flower_options=lambda rule: {},
        knobs=lambda rule: {},
    )
)
_register(
    Aggregator(
        name="trimmed_mean",
        summary="coordinate-wise mean without the trim_fraction lowest and highest, unweighted",
        reduce=lambda values, weights, rule: trimmed_mean(values, rule.trim_fraction),
        min_clients=_trimmed_min_clients,
        requirement=lambda rule: (
            f"--trim_fraction {rule.trim_fraction:g} cuts int({rule.trim_fraction:g} x n) "
            "clients from each end, none with fewer"
        ),
        flower_strategy="FedTrimmedAvg",
        flower_options=lambda rule: {"beta": rule.trim_fraction},
        knobs=lambda rule: {"trim_fraction": rule.trim_fraction},
    )
)
_register(
    Aggregator(
        name="krum",
        summary="the one client closest to its n - f - 2 nearest others",
        reduce=lambda values, weights, rule: values[krum_index(values, rule.krum_byzantine)],
        min_clients=lambda rule: 2 * rule.krum_byzantine + 3,
        requirement=lambda rule: (
            f"Krum with --krum_byzantine {rule.krum_byzantine} needs n >= 2f + 3"
        ),
        flower_strategy="Krum",
        flower_options=lambda rule: {"num_malicious_nodes": rule.krum_byzantine},
        knobs=lambda rule: {"krum_byzantine": rule.krum_byzantine},
    )
)


# ---------------------------------------------------------------------------- clipping
def clip_update(
    state: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """``state`` with its update ``state - reference`` (all arrays as one vector) scaled down to
    L2 norm ``max_norm`` when longer; and the update's norm before clipping.

    Arrays keep their dtype; the arithmetic is float64."""
    if set(state) != set(reference):
        raise ValueError(
            f"clip_update: state and reference differ in arrays "
            f"({sorted(set(state) ^ set(reference))[:3]})"
        )
    updates = {k: np.asarray(state[k], np.float64) - np.asarray(reference[k], np.float64)
               for k in state}  # fmt: skip
    norm = math.sqrt(sum(float(np.square(u).sum()) for u in updates.values()))
    if norm <= max_norm:
        return dict(state), norm
    scale = max_norm / norm
    clipped = {
        k: (np.asarray(reference[k], np.float64) + scale * updates[k]).astype(
            np.asarray(state[k]).dtype
        )
        for k in state
    }
    return clipped, norm
