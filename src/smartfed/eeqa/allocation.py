"""Elastic Expert Quota Allocation (EEQA), docs/design.md §1.4.

A device can afford ``K`` active experts per adapted matrix on average, i.e. a total budget
``K_tot = K · P`` over ``P`` matrices. EEQA spends that budget where it matters: matrices whose
experts change the output more (higher importance, docs/design.md §1.3) get a larger top-K
quota, the others a smaller one, never below ``k_min`` and never above the ``M_ℓ`` experts that
exist.

The function is pure numpy (no torch, no Flower) so the server can run it anywhere and the
properties of docs/design.md §1.4 can be tested exhaustively.

Tie-breaking (deterministic): matrices are ranked by their remainder ``q_ℓ − K_ℓ``; equal
remainders are ranked by matrix index, the lower index first. The lower index therefore wins a
tie both ways: it receives a unit first while units are handed out, and it gives a unit back
last while units are taken back.

Two optional limits keep the schedule from jolting the model (both off by default, which
reproduces the plain allocation exactly): ``k_max`` bounds every quota from above, and
``max_move`` bounds how far a quota may move from the ``previous`` round's,
``|K_ℓ − K_ℓ^prev| <= max_move``. Each matrix then has the interval ``[lo_ℓ, hi_ℓ]`` with
``lo_ℓ = max(k_min, K_ℓ^prev − max_move)`` and ``hi_ℓ = min(M_ℓ, k_max, K_ℓ^prev + max_move)``.
When these intervals cannot spend the budget (or cannot give enough back), the rule is: spend as
close to it as they allow, ``Σ K = clip(B, Σ lo, Σ hi)``; the quotas still move toward the
proportional target ``q``, so the budget is reached within a few rounds.
"""

from __future__ import annotations

import heapq
import numbers

import numpy as np

from smartfed.errors import ConfigError

__all__ = ["allocate_quotas", "uniform_quotas"]


def _as_capacities(capacities: np.ndarray) -> np.ndarray:
    """Validate expert counts per matrix and return them as a 1-D int64 array."""
    caps = np.asarray(capacities)
    if caps.ndim != 1 or caps.size == 0:
        raise ConfigError(f"EEQA: capacities must be a non-empty 1-D array, got shape {caps.shape}")
    if caps.dtype.kind == "f":
        if not np.all(np.isfinite(caps)) or not np.all(caps == np.floor(caps)):
            raise ConfigError(f"EEQA: capacities must be integers, got {caps.tolist()}")
    elif caps.dtype.kind not in "iu":
        raise ConfigError(f"EEQA: capacities must be integers, got dtype {caps.dtype}")
    caps = caps.astype(np.int64)
    if np.any(caps < 1):
        raise ConfigError(f"EEQA: every capacity must be >= 1, got min {int(caps.min())}")
    return caps


def _as_int(value: object, name: str) -> int:
    """Accept Python or numpy integers (not bools), reject anything else with a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"EEQA: {name} must be an integer, got {value!r}")
    return int(value)


def _as_previous(previous: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Validate the previous round's quotas (needed with ``max_move``) as an int64 array."""
    if previous is None:
        raise ConfigError("EEQA: max_move needs the previous round's quotas")
    prev = np.asarray(previous)
    if prev.shape != shape:
        raise ConfigError(f"EEQA: previous quotas have shape {prev.shape}, expected {shape}")
    if prev.dtype.kind == "f":
        if not np.all(np.isfinite(prev)) or not np.all(prev == np.floor(prev)):
            raise ConfigError(f"EEQA: previous quotas must be integers, got {prev.tolist()}")
    elif prev.dtype.kind not in "iu":
        raise ConfigError(f"EEQA: previous quotas must be integers, got dtype {prev.dtype}")
    return prev.astype(np.int64)


def uniform_quotas(capacities: np.ndarray, k: int) -> np.ndarray:
    """Quota ``min(k, M_ℓ)`` for every matrix: the warm-up allocation before importance exists.

    During the warm-up rounds (docs/design.md §1.4, default 1) there are no importance scores yet,
    so every matrix gets the plain per-matrix budget ``k``, capped by the experts it actually has.
    """
    caps = _as_capacities(capacities)
    k = _as_int(k, "k")
    if k < 1:
        raise ConfigError(f"EEQA: k must be >= 1, got {k}")
    return np.minimum(caps, k).astype(np.int64)


def allocate_quotas(
    importance: np.ndarray,
    capacities: np.ndarray,
    total_budget: int,
    k_min: int = 1,
    *,
    k_max: int | None = None,
    previous: np.ndarray | None = None,
    max_move: int | None = None,
) -> np.ndarray:
    """Split ``total_budget`` experts over matrices in proportion to their importance.

    Args:
        importance: ``I_ℓ >= 0`` per matrix (finite). All zeros means "no information" and is
            treated as uniform importance.
        capacities: ``M_ℓ >= 1``, the number of experts available to matrix ``ℓ``.
        total_budget: ``K_tot``, usually ``K · P``. Only ``min(K_tot, Σ min(M_ℓ, k_max))`` can
            be spent.
        k_min: lower bound on every quota (every matrix keeps at least this many experts).
        k_max: upper bound on every quota (None: only ``M_ℓ``); must be ``>= k_min``.
        previous: the quotas of the round before, each in ``[k_min, min(M_ℓ, k_max)]``; needed
            with ``max_move``, ignored without it.
        max_move: ``>= 1``, the most a quota may move from ``previous`` (None: no limit).

    Returns:
        int64 array ``K`` of shape ``(P,)`` with ``k_min <= K_ℓ <= min(M_ℓ, k_max)``,
        ``|K_ℓ − previous_ℓ| <= max_move`` and ``Σ K = clip(B, Σ lo, Σ hi)`` (module
        docstring), which is ``B = min(K_tot, Σ min(M, k_max))`` whenever the move limit allows
        it, in particular always without ``max_move``.

    Algorithm (docs/design.md §1.4), with ``B`` the effective budget, ``T = clip(B, Σ lo, Σ hi)``
    what is spent, and ``lo_ℓ = k_min``, ``hi_ℓ = M_ℓ`` unless ``k_max``/``max_move`` narrow them:

    1. proportional: ``q_ℓ = B · I_ℓ / Σ I``; ``K_ℓ = clip(floor(q_ℓ), lo_ℓ, hi_ℓ)``.
       (Using ``B`` rather than ``K_tot`` in ``q`` changes nothing: when ``K_tot > Σ M`` the
       only feasible answer is ``K = M`` either way.)
    2. greedy residual: while ``Σ K < T``, give one unit to the matrix with the largest
       remainder ``q_ℓ − K_ℓ`` among those with ``K_ℓ < hi_ℓ``; while ``Σ K > T`` (the lower
       clip overshot), take one unit back from the matrix with the smallest remainder among
       those with ``K_ℓ > lo_ℓ``. Remainders are recomputed after every unit, ties go to the
       lower matrix index (see the module docstring).

    The residual phase runs on a heap, O(units · log P), because caps can leave far more than
    ``P`` units to hand out (a very important matrix with few experts).

    Raises:
        ConfigError: on malformed inputs, or when ``B < k_min · P`` (the floor cannot be met).
    """
    caps = _as_capacities(capacities)
    imp = np.asarray(importance, dtype=np.float64)
    if imp.ndim != 1 or imp.shape != caps.shape:
        raise ConfigError(
            f"EEQA: importance shape {imp.shape} must equal capacities shape {caps.shape} (1-D)"
        )
    if not np.all(np.isfinite(imp)):
        raise ConfigError("EEQA: importance must be finite (got NaN or inf)")
    if np.any(imp < 0):
        raise ConfigError(f"EEQA: importance must be >= 0, got min {float(imp.min())}")
    total_budget = _as_int(total_budget, "total_budget")
    k_min = _as_int(k_min, "k_min")
    if k_min < 1:
        raise ConfigError(f"EEQA: k_min must be >= 1, got {k_min}")
    if k_min > int(caps.min()):
        raise ConfigError(
            f"EEQA: k_min={k_min} exceeds the smallest capacity {int(caps.min())} "
            f"(matrix {int(np.argmin(caps))})"
        )

    n = caps.size
    hi = caps.copy()
    capped = ""
    if k_max is not None:
        k_max = _as_int(k_max, "k_max")
        if k_max < k_min:
            raise ConfigError(f"EEQA: k_max={k_max} is below k_min={k_min}")
        hi = np.minimum(hi, k_max)
        capped = f", each capped at k_max={k_max}"
    upper = hi.copy()  # min(M_ℓ, k_max): the bounds every quota must respect
    budget = min(total_budget, int(upper.sum()))
    if budget < k_min * n:
        raise ConfigError(
            f"EEQA: budget {budget} (total_budget={total_budget}, sum of capacities="
            f"{int(upper.sum())}{capped}) is below k_min * P = {k_min} * {n} = {k_min * n}"
        )
    lo = np.full(n, k_min, dtype=np.int64)
    target = budget
    if max_move is not None:
        max_move = _as_int(max_move, "max_move")
        if max_move < 1:
            raise ConfigError(f"EEQA: max_move must be >= 1, got {max_move}")
        prev = _as_previous(previous, caps.shape)
        if np.any(prev < k_min) or np.any(prev > upper):
            bad = int(np.argmax((prev < k_min) | (prev > upper)))
            raise ConfigError(
                f"EEQA: previous quota {int(prev[bad])} of matrix {bad} lies outside "
                f"[k_min, min(M, k_max)] = [{k_min}, {int(upper[bad])}]"
            )
        lo = np.maximum(lo, prev - max_move)
        hi = np.minimum(hi, prev + max_move)
        # The move limit may not reach the budget (or give enough back): spend what it allows.
        target = min(max(budget, int(lo.sum())), int(hi.sum()))

    # Proportional phase. All-zero importance carries no information: every matrix gets the
    # same share. Otherwise rescale by a power of two (exact in floating point) so that Σ I
    # cannot overflow for huge scores, and divide last so that exactly representable shares
    # (e.g. q = 2.0) come out exact instead of 1.9999999999999998.
    peak = float(imp.max())
    share = np.ldexp(imp, -int(np.frexp(peak)[1])) if peak > 0 else np.ones(n, dtype=np.float64)
    q = budget * share / share.sum()
    quotas = np.clip(np.floor(q).astype(np.int64), lo, hi)

    diff = target - int(quotas.sum())
    if diff > 0:
        # Max-heap on remainder via (-remainder, index): lower index wins ties.
        heap = [(float(quotas[i] - q[i]), i) for i in range(n) if quotas[i] < hi[i]]
        heapq.heapify(heap)
        for _ in range(diff):
            # Non-empty: target <= Σ hi guarantees room somewhere while Σ K < target.
            _, i = heapq.heappop(heap)
            quotas[i] += 1
            if quotas[i] < hi[i]:
                heapq.heappush(heap, (float(quotas[i] - q[i]), i))
    elif diff < 0:
        # Min-heap on remainder; among equal remainders the higher index gives back first,
        # hence the key -index (the lower index keeps its unit longest).
        heap = [(float(q[i] - quotas[i]), -i) for i in range(n) if quotas[i] > lo[i]]
        heapq.heapify(heap)
        for _ in range(-diff):
            # Non-empty: target >= Σ lo guarantees a donor while Σ K > target.
            _, neg_i = heapq.heappop(heap)
            i = -neg_i
            quotas[i] -= 1
            if quotas[i] > lo[i]:
                heapq.heappush(heap, (float(q[i] - quotas[i]), -i))
    return quotas
