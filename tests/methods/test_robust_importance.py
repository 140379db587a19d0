"""SmartFed's server logic combines the clients' importance with the run's --aggregation: an
inflated vector grabs EEQA's quota budget under FedAvg, not under the robust rules."""

from __future__ import annotations

import numpy as np
import pytest

from smartfed.importance.aggregation import clip_shares
from smartfed.methods.smartfed import QuotaLogic, SmartFedSettings
from smartfed.robust import AggregationRule

CAPACITIES = np.array([8, 8, 8, 8])
HONEST = [
    {"importance": [3.0 * f, 2.0 * f, 3.0 * f, 4.0 * f], "tokens": 100}
    for f in (1.0, 1.1, 0.9, 1.05)
]
INFLATED = {"importance": [1e6, 0.0, 0.0, 0.0], "tokens": 100}


def _quotas(rule: AggregationRule, metrics: list[dict]) -> list[int]:
    logic = QuotaLogic(CAPACITIES, SmartFedSettings(topk_experts=3), 3, rule)
    logic.aggregate(metrics, completed_round=1)  # after the warm-up round: EEQA allocates
    return logic.quotas.tolist()


def test_inflated_importance_grabs_the_budget_under_fedavg():
    assert _quotas(AggregationRule(), HONEST) == [3, 2, 3, 4]
    assert _quotas(AggregationRule(), [INFLATED, *HONEST]) == [8, 1, 1, 2]


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_robust_rules_keep_the_honest_quotas(name):
    assert _quotas(AggregationRule(name=name), [INFLATED, *HONEST]) == [3, 2, 3, 4]


def test_clipping_bounds_the_inflating_client_to_an_honest_deviation():
    """The honest shares here are equal (the vectors only scale): no honest deviation, so the
    attacker's is clipped to nothing and the split is the honest one."""
    assert _quotas(AggregationRule(clip_update_norm=1.0), [INFLATED, *HONEST]) == [3, 2, 3, 4]


def test_clip_shares_pulls_an_outlier_to_the_median_deviation():
    honest = np.array([[0.3, 0.3, 0.4], [0.25, 0.35, 0.4], [0.3, 0.4, 0.3], [0.2, 0.3, 0.5]])
    attacker = np.array([1.0, 0.0, 0.0])
    shares = np.vstack([attacker, honest])
    clipped = clip_shares(np.vstack([attacker * 1e6, honest * 7.0]))  # totals do not matter
    assert np.allclose(clipped.sum(axis=1), 1.0)  # still shares of the split
    center = np.median(shares, axis=0)
    typical = np.median(np.linalg.norm(shares - center, axis=1))
    # The attacker's pull, before the final renormalisation, is a typical honest deviation: its
    # matrix-0 share falls from 1.0 to within that of the centre, the honest ones barely move.
    assert abs(clipped[0, 0] - center[0]) <= 1.05 * typical
    assert np.abs(clipped[1:] - honest).max() < 0.05
    assert clip_shares(np.zeros((3, 2))).tolist() == np.zeros((3, 2)).tolist()


def test_with_two_clients_clipping_only_normalises():
    """The median of two is their mean, from which both deviate equally: nothing to clip."""
    two = np.array([[1e6, 0.0, 0.0], [3.0, 3.0, 4.0]])
    np.testing.assert_allclose(clip_shares(two), [[1.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
