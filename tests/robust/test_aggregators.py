"""The robust aggregators as numpy: what each computes, what it needs, and the update clip."""

from __future__ import annotations

import numpy as np
import pytest

from smartfed.errors import ConfigError
from smartfed.importance.aggregation import combine_importance, weighted_mean
from smartfed.robust import AGGREGATORS, AggregationRule, clip_update, get_aggregator

HONEST = np.array([[1.0, 2.0], [1.2, 2.2], [0.8, 1.8], [1.1, 2.1]])
ATTACKER = np.array([[1e3, -1e3]])


def _rule(name: str, **knobs) -> AggregationRule:
    return AggregationRule(name=name, **knobs)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_robust_aggregators_stay_among_the_honest_values(name):
    values = np.concatenate([ATTACKER, HONEST])  # the attacker first: order must not matter
    combined = _rule(name).reduce(values, np.ones(len(values)))
    assert np.all(combined >= HONEST.min(axis=0)) and np.all(combined <= HONEST.max(axis=0))
    # The plain mean is dragged far off by the one attacker: the test above can fail.
    plain = _rule("fedavg").reduce(values, np.ones(len(values)))
    assert np.abs(plain - HONEST.mean(axis=0)).max() > 100


def test_hand_examples():
    values = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    ones = np.ones(5)
    assert _rule("median").reduce(values, ones).tolist() == [3.0]
    assert _rule("trimmed_mean").reduce(values, ones).tolist() == [3.0]  # cuts 1 of 5 each end
    assert _rule("trimmed_mean", trim_fraction=0.1).reduce(values, ones).tolist() == [22.0]
    assert _rule("krum").reduce(values, ones).tolist() in ([2.0], [3.0])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    assert _rule("fedavg").reduce(values, weights).tolist() == [2.5]


def test_fedavg_is_exactly_the_token_weighted_mean_of_importance():
    rng = np.random.default_rng(0)
    values = [rng.random(6) for _ in range(4)]
    tokens = [10, 300, 7, 55]
    plain = combine_importance(values, tokens, AggregationRule())
    assert np.array_equal(plain, weighted_mean(values, tokens))


def test_importance_inflation_is_outvoted_or_bounded():
    honest = [np.array([1.0, 2.0, 3.0, 4.0]) * s for s in (1.0, 1.1, 0.9, 1.05)]
    inflated = np.array([1e6, 0.0, 0.0, 0.0])
    values, tokens = [inflated, *honest], [100] * 5
    grabbed = combine_importance(values, tokens, AggregationRule())
    assert grabbed[0] / grabbed.sum() > 0.99  # fedavg: the attacker takes the whole split
    for name in ("median", "trimmed_mean", "krum"):
        robust = combine_importance(values, tokens, AggregationRule(name=name))
        assert robust[0] / robust.sum() < 0.2, name  # honest share of matrix 0: 0.1
    clipped = combine_importance(values, tokens, AggregationRule(clip_update_norm=1.0))
    # Shares clipped to the median deviation from the median share: the honest shares are all
    # [0.1, 0.2, 0.3, 0.4] (deviation 0), so the attacker is pulled back onto them.
    assert clipped.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(clipped, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_commutes_with_a_shift(name):
    """States or updates (state - global): the same aggregate, shifted by the global state."""
    rng = np.random.default_rng(1)
    values, weights = rng.normal(size=(7, 3, 2)), rng.random(7) + 0.1
    shift = rng.normal(size=(3, 2))
    rule = _rule(name)
    np.testing.assert_allclose(
        rule.reduce(values + shift, weights), rule.reduce(values, weights) + shift, atol=1e-12
    )


@pytest.mark.parametrize(
    ("rule", "needed"),
    [
        (AggregationRule(), 1),
        (AggregationRule(name="median"), 3),
        (AggregationRule(name="trimmed_mean"), 5),  # int(0.2 * 5) = 1
        (AggregationRule(name="trimmed_mean", trim_fraction=0.25), 4),
        (AggregationRule(name="trimmed_mean", trim_fraction=0.1), 10),
        (AggregationRule(name="trimmed_mean", trim_fraction=0.4), 3),
        (AggregationRule(name="krum"), 5),
        (AggregationRule(name="krum", krum_byzantine=2), 7),
    ],
)
def test_fewest_clients_each_rule_can_act_on(rule, needed):
    assert rule.min_clients == needed
    if rule.name == "trimmed_mean":  # at the minimum one client is cut from each end, not below
        assert int(rule.trim_fraction * needed) == 1
        assert int(rule.trim_fraction * (needed - 1)) == 0


def test_unknown_aggregator_is_one_line():
    with pytest.raises(ConfigError, match=r"--aggregation 'mean': expected one of fedavg, median"):
        get_aggregator("mean")


def test_clip_scales_long_updates_to_the_norm_and_keeps_short_ones():
    reference = {"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)}
    update = {"a": np.full((2, 2), 3.0), "b": np.array([4.0, 0.0, 0.0])}  # norm sqrt(36+16)
    state = {k: (reference[k] + update[k]).astype(np.float32) for k in reference}
    clipped, norm = clip_update(state, reference, 2.0)
    assert norm == pytest.approx(np.sqrt(52.0))
    assert all(clipped[k].dtype == np.float32 for k in clipped)
    new_update = {k: clipped[k].astype(np.float64) - reference[k] for k in reference}
    new_norm = np.sqrt(sum(np.square(u).sum() for u in new_update.values()))
    assert new_norm == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(new_update["a"] / new_update["b"][0], update["a"] / 4.0, rtol=1e-5)

    kept, short = clip_update(state, reference, 10.0)
    assert short == pytest.approx(np.sqrt(52.0))
    assert all(np.array_equal(kept[k], state[k]) for k in state)

    with pytest.raises(ValueError, match="differ in arrays"):
        clip_update({"a": state["a"]}, reference, 1.0)
