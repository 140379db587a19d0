"""Robust aggregation rules (median, trimmed mean, Krum, update clipping) as pure numpy.

The Flower-free side of ``--aggregation`` and ``--clip_update_norm``: the registry of
aggregators (what each one needs, how it reduces stacked client values, which Flower strategy
aggregates model payloads with it), used by the run config (refusals before any model loads),
by the importance aggregation that steers EEQA, and by the server's strategy.
"""

from smartfed.robust.aggregators import (
    AGGREGATORS,
    DEFAULT_KRUM_BYZANTINE,
    DEFAULT_TRIM_FRACTION,
    AggregationRule,
    Aggregator,
    clip_update,
    get_aggregator,
)

__all__ = [
    "AGGREGATORS",
    "DEFAULT_KRUM_BYZANTINE",
    "DEFAULT_TRIM_FRACTION",
    "AggregationRule",
    "Aggregator",
    "clip_update",
    "get_aggregator",
]
