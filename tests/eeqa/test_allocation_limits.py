"""EEQA's optional limits: a quota ceiling ``k_max`` and a per-round move cap ``max_move``.

Properties: every quota in ``[k_min, min(k_max, M)]``, ``|K − K_prev| <= max_move``, the sum rule
``Σ K = clip(B, Σ lo, Σ hi)`` (``B`` whenever the move cap allows it), determinism, and, with
the limits off, exactly today's allocation (checked against a frozen copy of it).
"""

from __future__ import annotations

import heapq
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartfed.eeqa import allocate_quotas, uniform_quotas
from smartfed.eeqa.server import next_quotas
from smartfed.errors import ConfigError

PROPS = settings(max_examples=200, deadline=None)


def reference_allocation(imp: np.ndarray, caps: np.ndarray, total: int, k_min: int) -> np.ndarray:
    """The allocation as it was before the limits existed (frozen copy, inputs assumed valid)."""
    caps = np.asarray(caps).astype(np.int64)
    imp = np.asarray(imp, dtype=np.float64)
    n = caps.size
    budget = min(total, int(caps.sum()))
    peak = float(imp.max())
    share = np.ldexp(imp, -int(np.frexp(peak)[1])) if peak > 0 else np.ones(n, dtype=np.float64)
    q = budget * share / share.sum()
    quotas = np.clip(np.floor(q).astype(np.int64), k_min, caps)
    diff = budget - int(quotas.sum())
    if diff > 0:
        heap = [(float(quotas[i] - q[i]), i) for i in range(n) if quotas[i] < caps[i]]
        heapq.heapify(heap)
        for _ in range(diff):
            _, i = heapq.heappop(heap)
            quotas[i] += 1
            if quotas[i] < caps[i]:
                heapq.heappush(heap, (float(quotas[i] - q[i]), i))
    elif diff < 0:
        heap = [(float(q[i] - quotas[i]), -i) for i in range(n) if quotas[i] > k_min]
        heapq.heapify(heap)
        for _ in range(-diff):
            _, neg_i = heapq.heappop(heap)
            i = -neg_i
            quotas[i] -= 1
            if quotas[i] > k_min:
                heapq.heappush(heap, (float(q[i] - quotas[i]), -i))
    return quotas


SCORES = st.one_of(
    st.just(0.0), st.floats(0.0, 1e-3), st.floats(0.0, 100.0), st.integers(0, 5).map(float)
)


@st.composite
def limited_inputs(draw: st.DrawFn) -> dict:
    """Random feasible inputs with optional k_max and max_move; ``previous`` is either an
    arbitrary table within the bounds or an earlier allocation of the same budget."""
    n = draw(st.integers(1, 30))
    k_min = draw(st.integers(1, 4))
    caps = np.array(draw(st.lists(st.integers(k_min, 64), min_size=n, max_size=n)))
    k_max = draw(st.one_of(st.none(), st.integers(k_min, 70)))
    upper = caps if k_max is None else np.minimum(caps, k_max)
    budget = draw(st.integers(k_min * n, int(upper.sum()) + 50))
    imp = np.array(draw(st.lists(SCORES, min_size=n, max_size=n)))
    if draw(st.booleans()):
        earlier = np.array(draw(st.lists(SCORES, min_size=n, max_size=n)))
        previous = allocate_quotas(earlier, caps, budget, k_min, k_max=k_max)
    else:
        previous = np.array([draw(st.integers(k_min, int(u))) for u in upper])
    max_move = draw(st.one_of(st.none(), st.integers(1, 8)))
    return dict(
        importance=imp, capacities=caps, total_budget=budget, k_min=k_min, k_max=k_max,
        previous=previous, max_move=max_move,
    )  # fmt: skip


def _bounds(args: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(lo, hi, B) of the module docstring of smartfed.eeqa.allocation."""
    caps, k_min, k_max = args["capacities"], args["k_min"], args["k_max"]
    upper = caps if k_max is None else np.minimum(caps, k_max)
    lo, hi = np.full(caps.size, k_min), upper.copy()
    if args["max_move"] is not None:
        lo = np.maximum(lo, args["previous"] - args["max_move"])
        hi = np.minimum(hi, args["previous"] + args["max_move"])
    return lo, hi, min(args["total_budget"], int(upper.sum()))


@PROPS
@given(limited_inputs())
def test_limits_bounds_moves_and_sum_rule(args: dict) -> None:
    quotas = allocate_quotas(**args)
    caps, k_min, k_max, prev = args["capacities"], args["k_min"], args["k_max"], args["previous"]
    assert quotas.dtype == np.int64 and quotas.shape == caps.shape
    assert np.all(quotas >= k_min)
    assert np.all(quotas <= (caps if k_max is None else np.minimum(caps, k_max)))
    if args["max_move"] is not None:
        assert np.all(np.abs(quotas - prev) <= args["max_move"])
    lo, hi, budget = _bounds(args)
    assert int(quotas.sum()) == min(max(budget, int(lo.sum())), int(hi.sum()))
    if args["max_move"] is None or int(prev.sum()) == budget:
        # An earlier allocation spent the budget: the move cap can always keep spending it.
        assert int(quotas.sum()) == budget


@PROPS
@given(limited_inputs())
def test_limits_are_deterministic_and_leave_inputs_untouched(args: dict) -> None:
    copies = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    first = allocate_quotas(**args)
    np.testing.assert_array_equal(first, allocate_quotas(**args))
    for key, value in copies.items():
        np.testing.assert_array_equal(args[key], value)


@PROPS
@given(limited_inputs())
def test_without_limits_the_allocation_is_todays(args: dict) -> None:
    imp, caps, budget, k_min = (args[k] for k in ("importance", "capacities", "total_budget",
                                                  "k_min"))  # fmt: skip
    expected = reference_allocation(imp, caps, budget, k_min)
    np.testing.assert_array_equal(allocate_quotas(imp, caps, budget, k_min), expected)
    # previous is ignored without max_move; limits too wide to bind change nothing either.
    loose = allocate_quotas(
        imp, caps, budget, k_min, k_max=int(caps.max()), previous=args["previous"]
    )
    np.testing.assert_array_equal(loose, expected)
    if args["k_max"] is None:  # previous within [k_min, M]: a move of max(M) never binds
        wide = allocate_quotas(
            imp, caps, budget, k_min, previous=args["previous"], max_move=int(caps.max())
        )
        np.testing.assert_array_equal(wide, expected)


@PROPS
@given(limited_inputs(), st.integers(1, 4))
def test_repeated_rounds_reach_the_unlimited_allocation(args: dict, move: int) -> None:
    """The move cap delays the schedule; with fixed importance it arrives where the plain
    allocation (under the same k_max) goes, one bounded step per round."""
    fixed = {k: args[k] for k in ("importance", "capacities", "total_budget", "k_min", "k_max")}
    goal = allocate_quotas(**fixed)
    quotas = allocate_quotas(**fixed, previous=args["previous"], max_move=move)
    # Each round that is not yet there moves at least one unit closer (L1), so this many rounds
    # always suffice; a fixed count like 70 // move does not when the budget couples the moves
    # (hypothesis found 73 rounds for caps [61, 39, 2, 2, 2, 51, 30, 2], move 1).
    for _ in range(int(np.abs(quotas - goal).sum()) + 2):
        step = allocate_quotas(**fixed, previous=quotas, max_move=move)
        assert np.all(np.abs(step - quotas) <= move)
        quotas = step
    np.testing.assert_array_equal(quotas, goal)


def test_move_cap_example() -> None:
    # q = [9, 0, 0], previous [3, 3, 3], max_move 1: lo = [2, 2, 2], hi = [4, 4, 4].
    # clip(floor q) = [4, 2, 2] (sum 8); one unit to hand out: matrix 0 is at hi, matrices 1
    # and 2 tie on remainder -2, the lower index wins. Result [4, 3, 2].
    quotas = allocate_quotas(
        np.array([1.0, 0.0, 0.0]), np.full(3, 10), 9, previous=np.array([3, 3, 3]), max_move=1
    )
    np.testing.assert_array_equal(quotas, [4, 3, 2])
    np.testing.assert_array_equal(allocate_quotas(np.array([1.0, 0.0, 0.0]), np.full(3, 10), 9),
                                  [7, 1, 1])  # fmt: skip


def test_k_max_example() -> None:
    # q = [9, 0, 0], k_max 5: clip -> [5, 1, 1] (sum 7); two units: remainders of matrices 1
    # and 2 tie at -1 (matrix 1 first, then -2 vs -1: matrix 2). Result [5, 2, 2].
    quotas = allocate_quotas(np.array([1.0, 0.0, 0.0]), np.full(3, 10), 9, k_max=5)
    np.testing.assert_array_equal(quotas, [5, 2, 2])
    # k_max lowers what can be spent: B = min(K_tot, Σ min(M, k_max)) = min(40, 3 * 5).
    np.testing.assert_array_equal(allocate_quotas(np.ones(3), np.full(3, 10), 40, k_max=5),
                                  [5, 5, 5])  # fmt: skip


def test_unreachable_budget_spends_what_the_move_cap_allows() -> None:
    # M = [2, 10], K = 4: the uniform start [2, 4] spends 6 of B = 8; with max_move 1 the
    # second matrix can only reach 5 this round (Σ = 7), and 6 the round after (Σ = B).
    caps, imp = np.array([2, 10]), np.array([1.0, 1.0])
    start = uniform_quotas(caps, 4)
    first = allocate_quotas(imp, caps, 8, previous=start, max_move=1)
    np.testing.assert_array_equal(first, [2, 5])
    np.testing.assert_array_equal(allocate_quotas(imp, caps, 8, previous=first, max_move=1), [2, 6])


def test_overspent_previous_gives_back_what_the_move_cap_allows() -> None:
    # previous [6, 6] against B = 4: lo = [5, 5], so Σ K = Σ lo = 10 this round.
    quotas = allocate_quotas(np.ones(2), np.full(2, 10), 4, previous=np.array([6, 6]), max_move=1)
    np.testing.assert_array_equal(quotas, [5, 5])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(max_move=1), "needs the previous round's quotas"),
        (dict(max_move=0, previous=np.array([2, 2])), "max_move must be >= 1"),
        (dict(max_move=1.0, previous=np.array([2, 2])), "max_move must be an integer"),
        (dict(max_move=1, previous=np.array([2, 2, 2])), "shape"),
        (dict(max_move=1, previous=np.array([2.5, 2])), "integers"),
        (dict(max_move=1, previous=np.array([0, 2])), "outside [k_min, min(M, k_max)] = [1, 3]"),
        (dict(max_move=1, k_max=2, previous=np.array([3, 1])), "= [1, 2]"),
        (dict(k_max=0), "k_max=0 is below k_min=1"),
        (dict(k_max=True), "k_max must be an integer"),
    ],
)
def test_invalid_limits_raise_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        allocate_quotas(np.ones(2), np.full(2, 3), 4, **kwargs)
    assert "\n" not in str(info.value)


def test_budget_below_the_floor_names_the_cap() -> None:
    # B = min(3, Σ min(M, k_max) = 8) = 3 < k_min * P = 4.
    with pytest.raises(ConfigError, match=re.escape("sum of capacities=8, each capped at k_max=4")):
        allocate_quotas(np.ones(2), np.full(2, 5), 3, k_min=2, k_max=4)


def test_next_quotas_passes_the_limits_and_starts_from_uniform() -> None:
    common = dict(capacities=np.full(3, 10), top_k=3, k_min=1, warmup_rounds=1, enable_eeqa=True)
    imp = np.array([1.0, 0.0, 0.0])
    # Warm-up: uniform whatever the limits.
    warm = next_quotas(importance=imp, completed_round=0, max_move=1, k_max=4, **common)
    np.testing.assert_array_equal(warm, [3, 3, 3])
    # First EEQA round without a previous table: the move is measured from the uniform one.
    first = next_quotas(importance=imp, completed_round=1, max_move=1, **common)
    np.testing.assert_array_equal(first, [4, 3, 2])
    second = next_quotas(importance=imp, completed_round=2, max_move=1, previous=first, **common)
    np.testing.assert_array_equal(second, [5, 2, 2])
    capped = next_quotas(importance=imp, completed_round=2, k_max=5, **common)
    np.testing.assert_array_equal(capped, [5, 2, 2])
    free = next_quotas(importance=imp, completed_round=2, previous=first, **common)
    np.testing.assert_array_equal(free, [7, 1, 1])  # previous alone changes nothing
