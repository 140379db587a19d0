"""Elastic Expert Quota Allocation: docs/design.md §1.4's properties and hand-computed examples."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartfed.eeqa import allocate_quotas, uniform_quotas
from smartfed.errors import ConfigError

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def feasible_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Random (importance, capacities, total_budget, k_min) for which a solution exists."""
    n = draw(st.integers(1, 40))
    k_min = draw(st.integers(1, 4))
    caps = np.array(draw(st.lists(st.integers(k_min, 64), min_size=n, max_size=n)))
    # Mix of zeros, tiny and large scores so both clip directions and ties get exercised.
    score = st.one_of(
        st.just(0.0),
        st.floats(0.0, 1e-3),
        st.floats(0.0, 100.0),
        st.integers(0, 5).map(float),
    )
    imp = np.array(draw(st.lists(score, min_size=n, max_size=n)))
    budget = draw(st.integers(k_min * n, int(caps.sum()) + 50))
    return imp, caps, budget, k_min


@PROPS
@given(feasible_inputs())
def test_budget_conservation_and_bounds(inputs: tuple) -> None:
    imp, caps, budget, k_min = inputs
    quotas = allocate_quotas(imp, caps, budget, k_min)
    assert quotas.dtype == np.int64
    assert quotas.shape == caps.shape
    assert int(quotas.sum()) == min(budget, int(caps.sum()))
    assert np.all(quotas >= k_min)
    assert np.all(quotas <= caps)


@PROPS
@given(feasible_inputs())
def test_deterministic_and_inputs_untouched(inputs: tuple) -> None:
    imp, caps, budget, k_min = inputs
    imp_copy, caps_copy = imp.copy(), caps.copy()
    first = allocate_quotas(imp, caps, budget, k_min)
    second = allocate_quotas(imp, caps, budget, k_min)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(imp, imp_copy)
    np.testing.assert_array_equal(caps, caps_copy)


@st.composite
def unclipped_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Inputs where every floor(q_ℓ) lies in [k_min, M_ℓ), so no clip ever happens.

    Importance in [1, 10] gives every matrix a share >= 1 / (10 P); with K_tot >= 10 P k_min
    every q_ℓ >= k_min. Capacities are drawn above floor(q_ℓ) so Σ M > K_tot and B = K_tot.
    """
    n = draw(st.integers(1, 30))
    k_min = draw(st.integers(1, 3))
    imp = np.array(draw(st.lists(st.floats(1.0, 10.0), min_size=n, max_size=n)))
    per_matrix = draw(st.integers(10 * k_min, 60))
    budget = per_matrix * n
    q = budget * imp / imp.sum()
    extra = np.array(draw(st.lists(st.integers(1, 20), min_size=n, max_size=n)))
    caps = np.floor(q).astype(np.int64) + extra
    return imp, caps, budget, k_min


@PROPS
@given(unclipped_inputs())
def test_without_clipping_quota_within_one_of_proportional_share(inputs: tuple) -> None:
    imp, caps, budget, k_min = inputs
    q = budget * imp / imp.sum()
    assert np.all(np.floor(q) >= k_min) and np.all(np.floor(q) < caps)  # precondition
    quotas = allocate_quotas(imp, caps, budget, k_min)
    assert int(quotas.sum()) == budget
    # |K_ℓ − q_ℓ| < 1 (tiny slack only for float rounding of q itself).
    assert np.all(np.abs(quotas - q) < 1 + 1e-9)


@PROPS
@given(
    n=st.integers(1, 40),
    per=st.integers(1, 30),
    cap=st.integers(30, 64),
    level=st.sampled_from([0.0, 1.0, 0.1, 3.7, 1e-12, 1e6]),
)
def test_uniform_importance_equal_caps_divisible_budget_is_uniform(
    n: int, per: int, cap: int, level: float
) -> None:
    quotas = allocate_quotas(np.full(n, level), np.full(n, cap), per * n)
    np.testing.assert_array_equal(quotas, np.full(n, per))


@PROPS
@given(
    n=st.integers(1, 40),
    budget_extra=st.integers(0, 400),
    level=st.sampled_from([0.0, 1.0, 0.1, 3.7]),
)
def test_uniform_importance_remainder_goes_to_lowest_indices(
    n: int, budget_extra: int, level: float
) -> None:
    budget = n + budget_extra
    base, rest = divmod(budget, n)
    caps = np.full(n, base + 1)  # never binding
    quotas = allocate_quotas(np.full(n, level), caps, budget)
    expected = np.array([base + 1] * rest + [base] * (n - rest))
    np.testing.assert_array_equal(quotas, expected)


@PROPS
@given(
    caps=st.lists(st.integers(1, 20), min_size=1, max_size=30),
    frac=st.floats(0.0, 1.0),
)
def test_uniform_importance_uneven_caps_balanced_below_cap(caps: list[int], frac: float) -> None:
    caps_arr = np.array(caps)
    n = caps_arr.size
    budget = n + round(frac * (int(caps_arr.sum()) - n))
    quotas = allocate_quotas(np.ones(n), caps_arr, budget)
    assert int(quotas.sum()) == budget
    free = quotas < caps_arr
    if free.any():
        # Water-filling: matrices still below their cap differ by at most one unit, and a
        # capped matrix sits at most one unit above the lowest of them.
        assert quotas[free].max() - quotas[free].min() <= 1
        assert np.all(quotas[~free] <= quotas[free].min() + 1)


def test_proportional_example() -> None:
    # q = 12 * [5, 3, 2] / 10 = [6, 3.6, 2.4]; floors [6, 3, 2] (sum 11); the one missing unit
    # goes to the largest remainder, 0.6 (matrix 1).
    quotas = allocate_quotas(np.array([5.0, 3.0, 2.0]), np.array([10, 10, 10]), 12)
    np.testing.assert_array_equal(quotas, [6, 4, 2])


def test_cap_redistribution_example() -> None:
    # q = [8, 1, 1]; matrix 0 is capped at 2, leaving 6 units. Matrices 1 and 2 tie on every
    # remainder, so they alternate (lower index first) and each gets 3.
    quotas = allocate_quotas(np.array([8.0, 1.0, 1.0]), np.array([2, 10, 10]), 10)
    np.testing.assert_array_equal(quotas, [2, 4, 4])


def test_cap_redistribution_follows_remainders() -> None:
    # B = 10, q = [6, 2.5, 1.5]; clip -> [3, 2, 1] (sum 6), 4 units to hand out by remainder:
    # r = [., 0.5, 0.5] -> tie, matrix 1 (lower index) -> r1 = -0.5; matrix 2 -> r2 = -0.5;
    # tie -> matrix 1 -> r1 = -1.5; matrix 2 -> r2 = -1.5. Result [3, 4, 3].
    quotas = allocate_quotas(np.array([12.0, 5.0, 3.0]), np.array([3, 10, 10]), 10)
    np.testing.assert_array_equal(quotas, [3, 4, 3])


def test_overshoot_takes_back_smallest_remainders() -> None:
    # B = 20, k_min = 3, q = 20 * [10.75, 6.25, 2, 1] / 20 = [10.75, 6.25, 2, 1].
    # floors [10, 6, 2, 1] -> clip to k_min: [10, 6, 3, 3], sum 22, two units too many.
    # Donors (K > 3): remainders 0.75 (m0) and 0.25 (m1). Take from m1 (0.25 -> 1.25), then
    # the smallest is m0 (0.75 -> 1.75). Result [9, 5, 3, 3].
    quotas = allocate_quotas(np.array([10.75, 6.25, 2.0, 1.0]), np.full(4, 20), 20, k_min=3)
    np.testing.assert_array_equal(quotas, [9, 5, 3, 3])


def test_overshoot_single_donor_down_to_k_min() -> None:
    # q = [7.76, 0.08, 0.08, 0.08] -> clip [7, 2, 2, 2] = 13 > 8: matrix 0 gives back 5.
    quotas = allocate_quotas(np.array([97.0, 1.0, 1.0, 1.0]), np.full(4, 10), 8, k_min=2)
    np.testing.assert_array_equal(quotas, [2, 2, 2, 2])


def test_tie_break_hand_out_prefers_lower_index() -> None:
    np.testing.assert_array_equal(allocate_quotas(np.ones(3), np.full(3, 5), 4), [2, 1, 1])
    np.testing.assert_array_equal(allocate_quotas(np.ones(3), np.full(3, 5), 5), [2, 2, 1])
    # Equal remainders on matrices 1 and 3 (q = [2.0, 1.5, 2.0, 1.5] with B = 7): floors sum 6,
    # the unit goes to matrix 1, not 3.
    quotas = allocate_quotas(np.array([4.0, 3.0, 4.0, 3.0]), np.full(4, 5), 7)
    np.testing.assert_array_equal(quotas, [2, 2, 2, 1])


def test_tie_break_take_back_keeps_lower_index() -> None:
    # B = 10, k_min = 2, q = [5, 4, 0.5, 0.5] -> clip [5, 4, 2, 2] = 13, three units back.
    # Remainders 0 and 0 tie: the higher index (m1) gives first -> r1 = 1; then m0 (r0 = 0)
    # -> r0 = 1; tie again -> m1. Result [4, 2, 2, 2].
    quotas = allocate_quotas(np.array([10.0, 8.0, 1.0, 1.0]), np.full(4, 10), 10, k_min=2)
    np.testing.assert_array_equal(quotas, [4, 2, 2, 2])


def test_all_zero_importance_is_uniform() -> None:
    np.testing.assert_array_equal(allocate_quotas(np.zeros(4), np.full(4, 8), 16), [4, 4, 4, 4])
    np.testing.assert_array_equal(allocate_quotas(np.zeros(3), np.full(3, 8), 5), [2, 2, 1])


def test_budget_above_total_capacity_fills_every_matrix() -> None:
    quotas = allocate_quotas(np.array([1.0, 0.0, 5.0]), np.array([2, 3, 4]), 100, k_min=1)
    np.testing.assert_array_equal(quotas, [2, 3, 4])


def test_single_matrix_and_huge_scores() -> None:
    np.testing.assert_array_equal(allocate_quotas(np.array([3.0]), np.array([10]), 7), [7])
    # Σ I overflows float64 if summed naively; the result must still be proportional.
    quotas = allocate_quotas(np.array([1e308, 1e308, 0.0]), np.full(3, 10), 9)
    np.testing.assert_array_equal(quotas, [4, 4, 1])


def test_accepts_numpy_integer_budget_and_float_capacities() -> None:
    quotas = allocate_quotas(np.ones(2), np.array([3.0, 3.0]), np.int64(4))
    np.testing.assert_array_equal(quotas, [2, 2])


def test_large_budget_with_small_caps_is_fast_and_exact() -> None:
    # One dominant matrix with a tiny cap leaves ~budget units to the greedy phase.
    n = 300
    imp = np.ones(n)
    imp[0] = 1e9
    caps = np.full(n, 64)
    caps[0] = 1
    quotas = allocate_quotas(imp, caps, 32 * n)
    assert int(quotas.sum()) == 32 * n
    assert quotas[0] == 1
    assert quotas[1:].max() - quotas[1:].min() <= 1


@pytest.mark.parametrize(
    ("imp", "caps", "budget", "k_min", "needle"),
    [
        (np.ones(3), np.full(3, 3), 5, 2, "below k_min * P"),  # 5 < 2 * 3
        (np.ones(2), np.array([1, 1]), 5, 2, "exceeds the smallest capacity"),
        (np.ones(2), np.full(2, 3), 1, 1, "below k_min * P"),
        (np.ones(2), np.full(2, 3), -4, 1, "below k_min * P"),
        (np.ones(3), np.full(2, 3), 4, 1, "shape"),
        (np.ones((2, 2)), np.full((2, 2), 3), 4, 1, "1-D"),
        (np.array([]), np.array([], dtype=np.int64), 0, 1, "non-empty"),
        (np.ones(2), np.array([3, 0]), 2, 1, ">= 1"),
        (np.ones(2), np.array([3.0, 2.5]), 2, 1, "integers"),
        (np.ones(2), np.array(["a", "b"]), 2, 1, "integers"),
        (np.ones(2), np.full(2, 3), 4, 0, "k_min must be >= 1"),
        (np.ones(2), np.full(2, 3), 4.0, 1, "total_budget must be an integer"),
        (np.ones(2), np.full(2, 3), True, 1, "total_budget must be an integer"),
        (np.array([1.0, np.nan]), np.full(2, 3), 4, 1, "finite"),
        (np.array([1.0, np.inf]), np.full(2, 3), 4, 1, "finite"),
        (np.array([1.0, -0.5]), np.full(2, 3), 4, 1, ">= 0"),
    ],
)
def test_invalid_inputs_raise_config_error(
    imp: np.ndarray, caps: np.ndarray, budget: object, k_min: int, needle: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        allocate_quotas(imp, caps, budget, k_min)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_infeasible_message_names_the_numbers() -> None:
    with pytest.raises(ConfigError) as info:
        allocate_quotas(np.ones(4), np.full(4, 5), 7, k_min=2)
    msg = str(info.value)
    assert "7" in msg and "2 * 4 = 8" in msg


def test_uniform_quotas() -> None:
    np.testing.assert_array_equal(uniform_quotas(np.array([2, 8, 5]), 4), [2, 4, 4])
    assert uniform_quotas(np.array([2, 8, 5]), 4).dtype == np.int64
    np.testing.assert_array_equal(uniform_quotas(np.array([64, 64]), 64), [64, 64])
    with pytest.raises(ConfigError, match="k must be >= 1"):
        uniform_quotas(np.array([2, 3]), 0)
    with pytest.raises(ConfigError, match=">= 1"):
        uniform_quotas(np.array([0, 3]), 2)
