"""Server-side importance aggregation: token-weighted mean and EMA (docs/design.md §1.3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smartfed.errors import ConfigError
from smartfed.importance.aggregation import ema_update, weighted_mean

PROPS = settings(max_examples=200, deadline=None)


def test_weighted_mean_by_token_counts() -> None:
    # (100 * [1, 0] + 300 * [0, 1]) / 400 = [0.25, 0.75]
    out = weighted_mean([np.array([1.0, 0.0]), np.array([0.0, 1.0])], [100, 300])
    np.testing.assert_allclose(out, [0.25, 0.75])
    assert out.dtype == np.float64


def test_weighted_mean_hand_example_three_clients() -> None:
    values = [np.array([0.2, 0.4, 0.0]), np.array([0.6, 0.0, 0.3]), np.array([1.0, 1.0, 1.0])]
    # weights 1, 3, 0 -> third client ignored: (0.2 + 1.8) / 4 = 0.5, 0.4 / 4 = 0.1, 0.9 / 4.
    out = weighted_mean(values, [1.0, 3.0, 0.0])
    np.testing.assert_allclose(out, [0.5, 0.1, 0.225])


def test_weighted_mean_single_client_and_2d() -> None:
    per_expert = np.arange(6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_allclose(weighted_mean([per_expert], [7]), per_expert)
    out = weighted_mean([per_expert, 2 * per_expert], [1, 1])
    np.testing.assert_allclose(out, 1.5 * per_expert)
    assert out.shape == (2, 3)


def test_weighted_mean_huge_token_counts() -> None:
    out = weighted_mean([np.array([1.0]), np.array([3.0])], [1e308, 1e308])
    np.testing.assert_allclose(out, [2.0])


@PROPS
@given(
    values=st.lists(
        hnp.arrays(np.float64, 4, elements=st.floats(0.0, 10.0)), min_size=1, max_size=8
    ),
    data=st.data(),
)
def test_weighted_mean_matches_direct_formula_and_stays_in_range(
    values: list[np.ndarray], data: st.DataObject
) -> None:
    weights = data.draw(
        st.lists(st.integers(0, 10_000), min_size=len(values), max_size=len(values)).filter(
            lambda w: sum(w) > 0
        )
    )
    out = weighted_mean(values, weights)
    w = np.array(weights, dtype=np.float64)
    expected = (w[:, None] * np.stack(values)).sum(axis=0) / w.sum()
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    stacked = np.stack(values)
    assert np.all(out >= stacked.min(axis=0) - 1e-12)
    assert np.all(out <= stacked.max(axis=0) + 1e-12)


@pytest.mark.parametrize(
    ("values", "weights", "needle"),
    [
        ([], [], "no client values"),
        ([np.ones(2)], [1, 2], "2 weights"),
        ([np.ones(2), np.ones(3)], [1, 1], "shape"),
        ([np.ones(2), np.array([1.0, np.nan])], [1, 1], "NaN or inf"),
        ([np.ones(2), np.ones(2)], [1, -1], ">= 0"),
        ([np.ones(2), np.ones(2)], [0, 0], "all weights are zero"),
        ([np.ones(2)], [np.inf], "weights contain NaN or inf"),
    ],
)
def test_weighted_mean_rejects_bad_input(values: list, weights: list, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        weighted_mean(values, weights)


def test_ema_first_round_returns_current_copy() -> None:
    current = np.array([1.0, 2.0])
    out = ema_update(None, current)
    np.testing.assert_array_equal(out, [1.0, 2.0])
    out[0] = 99.0
    assert current[0] == 1.0  # not an alias


def test_ema_default_beta_weights_history() -> None:
    # 0.7 * [1, 0] + 0.3 * [0, 10] = [0.7, 3.0]
    out = ema_update(np.array([1.0, 0.0]), np.array([0.0, 10.0]))
    np.testing.assert_allclose(out, [0.7, 3.0])


def test_ema_beta_zero_is_current_and_custom_beta() -> None:
    np.testing.assert_allclose(ema_update(np.array([5.0]), np.array([2.0]), beta=0.0), [2.0])
    np.testing.assert_allclose(ema_update(np.array([4.0]), np.array([0.0]), beta=0.25), [1.0])


def test_ema_converges_to_constant_signal() -> None:
    state = None
    for _ in range(60):
        state = ema_update(state, np.array([3.0, 1.0]) if state is not None else np.zeros(2))
    # Started at 0: after 59 updates the gap is 0.7**59 * target.
    np.testing.assert_allclose(state, [3.0, 1.0], atol=1e-8)
    assert state[0] < 3.0


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_ema_rejects_bad_beta(beta: object) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        ema_update(np.ones(2), np.ones(2), beta=beta)  # type: ignore[arg-type]


def test_ema_rejects_shape_mismatch_and_non_finite() -> None:
    with pytest.raises(ValueError, match="shape"):
        ema_update(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="current"):
        ema_update(None, np.array([np.nan]))
    with pytest.raises(ValueError, match="previous"):
        ema_update(np.array([np.inf]), np.array([1.0]))
