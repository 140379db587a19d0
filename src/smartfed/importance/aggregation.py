"""Server-side aggregation of importance scores (docs/design.md §1.3), pure numpy.

Each client measures importance per matrix (and per expert) during its local steps and reports it
together with the number of tokens it was averaged over. The server combines the reports with a
token-weighted mean, so a client that saw more tokens counts proportionally more, exactly as if
all tokens had been scored in one place. The round's estimate is noisy (only a few clients are
sampled per round), so it is smoothed over rounds with an exponential moving average before it
drives EEQA.

With a robust ``--aggregation`` (:mod:`smartfed.robust`) the clients' vectors are combined by
that rule instead of the token-weighted mean (:func:`combine_importance`): one client inflating
its importance to grab EEQA's quota budget is then outvoted. Under ``--clip_update_norm`` each
client's vector is first scaled to sum 1, its share of the split (EEQA's allocation depends on
the ratios only), and then clipped like an update: its deviation from the round's
coordinate-wise median share is shortened to the median client's deviation (centred clipping,
Karimireddy et al., 2021). The router clip norm C is in parameter units and means nothing for
shares, hence the bound from the round itself: a client pulls the split no further than a typical
honest client does. That needs at least 3 clients per round: with 2, the vectors are only scaled
to sum 1 (each client then moves the split by its weight, no more).

Malformed reports are programming or protocol errors and raise ``ValueError``; an invalid ``beta``
is a configuration value and raises ``ConfigError``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from smartfed.errors import ConfigError
from smartfed.robust import AggregationRule

__all__ = ["clip_shares", "combine_importance", "ema_update", "weighted_mean"]


def weighted_mean(values: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted average ``Σ_c w_c v_c / Σ_c w_c`` of per-client importance arrays.

    Args:
        values: one array per client, all of the same shape (e.g. ``(P,)`` per matrix or
            ``(P, M)`` per expert); must be finite.
        weights: one non-negative weight per client, typically its token count. Zero weights are
            allowed (that client is ignored) but not all of them.

    Returns:
        float64 array of the common shape.

    Raises:
        ValueError: empty input, length or shape mismatch, non-finite values, negative,
            non-finite or all-zero weights.
    """
    if len(values) == 0:
        raise ValueError("weighted_mean: no client values to aggregate")
    if len(weights) != len(values):
        raise ValueError(
            f"weighted_mean: got {len(values)} value arrays but {len(weights)} weights"
        )
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    shape = arrays[0].shape
    for idx, arr in enumerate(arrays):
        if arr.shape != shape:
            raise ValueError(f"weighted_mean: value {idx} has shape {arr.shape}, expected {shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"weighted_mean: value {idx} contains NaN or inf")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weighted_mean: weights must be 1-D, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weighted_mean: weights contain NaN or inf")
    if np.any(w < 0):
        raise ValueError(f"weighted_mean: weights must be >= 0, got {w.tolist()}")
    peak = float(w.max())
    if peak <= 0:
        raise ValueError("weighted_mean: all weights are zero")
    # Scale by the largest weight, then normalise, so huge counts cannot overflow the sum.
    scaled = w / peak
    norm = scaled / scaled.sum()
    return np.tensordot(norm, np.stack(arrays), axes=1)


def combine_importance(
    values: Sequence[np.ndarray], weights: Sequence[float], rule: AggregationRule
) -> np.ndarray:
    """The clients' importance combined by ``rule`` (``fedavg``: :func:`weighted_mean`).

    Under ``rule.clip_update_norm`` the vectors go through :func:`clip_shares` first. Raises
    ``ValueError`` on the inputs :func:`weighted_mean` refuses."""
    weighted_mean(values, weights)  # validates: shapes, finite values, usable weights
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    if rule.clip_update_norm is not None:
        stacked = clip_shares(stacked)
    return rule.reduce(stacked, np.asarray(weights, dtype=np.float64))


def clip_shares(stacked: np.ndarray) -> np.ndarray:
    """Each client's importance (axis 0) as shares of its total, its deviation from the
    coordinate-wise median share clipped to the median deviation norm, then again as shares
    (the median of shares need not sum to 1). With fewer than 3 clients this only normalises:
    the median of two is their mean, from which both deviate equally."""
    flat = stacked.reshape(len(stacked), -1)
    shares = _as_shares(flat)
    center = np.median(shares, axis=0)
    deviation = shares - center
    norms = np.linalg.norm(deviation, axis=1, keepdims=True)
    bound = float(np.median(norms))
    scale = np.minimum(1.0, bound / np.where(norms > 0, norms, 1.0))
    return _as_shares(center + deviation * scale).reshape(stacked.shape)


def _as_shares(rows: np.ndarray) -> np.ndarray:
    """Each row over its total (an all-zero row stays zero)."""
    totals = rows.sum(axis=1, keepdims=True)
    return rows / np.where(totals > 0, totals, 1.0)


def ema_update(previous: np.ndarray | None, current: np.ndarray, beta: float = 0.7) -> np.ndarray:
    """Exponential moving average ``beta · previous + (1 − beta) · current``.

    ``beta`` is the weight of the history (docs/design.md §1.3: default 0.7): 0 means no smoothing
    (use this round only); values near 1 make the quotas react slowly. With no history yet (first
    round) the current estimate is returned as is (as a new float64 array, never an alias).

    Raises:
        ConfigError: ``beta`` is not a real number in ``[0, 1)``.
        ValueError: shapes differ, or an input is not finite.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ConfigError(f"importance EMA beta must be a number in [0, 1), got {beta!r}")
    cur = np.array(current, dtype=np.float64, copy=True)
    if not np.all(np.isfinite(cur)):
        raise ValueError("ema_update: current importance contains NaN or inf")
    if previous is None:
        return cur
    prev = np.asarray(previous, dtype=np.float64)
    if prev.shape != cur.shape:
        raise ValueError(f"ema_update: previous shape {prev.shape} != current shape {cur.shape}")
    if not np.all(np.isfinite(prev)):
        raise ValueError("ema_update: previous importance contains NaN or inf")
    beta = float(beta)
    return beta * prev + (1.0 - beta) * cur
