"""--aggregation and --clip_update_norm through the real strategy: Flower's FedAvg, FedMedian,
FedTrimmedAvg and Krum give what the numpy rules of smartfed.robust define, and a round with
too few usable replies for the rule fails clearly."""

from __future__ import annotations

import flwr.serverapp.strategy as flower_strategies
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from smartfed.engine.method import ServerLogic
from smartfed.federation.inprocess import InProcessGrid
from smartfed.federation.strategy import RoundFailed, SmartFedStrategy
from smartfed.robust import AGGREGATORS, AggregationRule, clip_update

CLIENTS = 5
SHAPES = {"a.router.weight": (6, 4), "b.router.weight": (10,)}


def _global_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}


def _update(partition: int) -> dict[str, np.ndarray]:
    """Client 0 attacks (an update 1e3 times too long); the others are honest and close."""
    rng = np.random.default_rng(100 + partition)
    scale = 1e3 if partition == 0 else 0.1
    return {name: scale * rng.normal(size=shape) for name, shape in SHAPES.items()}


def _examples(partition: int) -> int:
    return 10 + 5 * partition  # unequal: FedAvg's weights matter


def _client_app(failing: set[int] = frozenset()) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        if partition in failing:
            raise RuntimeError("disk full")
        sent = msg.content["arrays"].to_torch_state_dict()
        update = _update(partition)
        state = {k: (v.double() + torch.from_numpy(update[k])).float() for k, v in sent.items()}
        metrics = {"num-examples": _examples(partition), "train-loss": 1.0, "tokens": 5,
                   "step-time-s": 0.1}  # fmt: skip
        return Message(
            RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)}),
            reply_to=msg,
        )

    return app


def _one_round(
    rule: AggregationRule, failing: set[int] = frozenset(), reports: list | None = None
) -> dict[str, np.ndarray]:
    ended: dict[str, torch.Tensor] = {}
    reports = [] if reports is None else reports
    strategy = SmartFedStrategy(
        num_clients=CLIENTS,
        sample_clients=CLIENTS,
        min_replies=1,
        server_logic=ServerLogic(),
        seed=0,
        on_round_end=lambda report, state: (reports.append(report), ended.update(state)),
        node_wait_s=5,
        aggregation=rule,
    )
    strategy.run(InProcessGrid(_client_app(failing), CLIENTS, {}), _global_state(), num_rounds=1)
    return {name: tensor.numpy().astype(np.float64) for name, tensor in ended.items()}


def _expected(rule: AggregationRule) -> dict[str, np.ndarray]:
    """The numpy rule on what the clients sent (float32 on the wire), clipped first."""
    start = {k: v.numpy() for k, v in _global_state().items()}
    states = []
    for partition in range(CLIENTS):
        update = _update(partition)
        state = {k: (start[k].astype(np.float64) + update[k]).astype(np.float32) for k in start}
        if rule.clip_update_norm is not None:
            state, _ = clip_update(state, start, rule.clip_update_norm)
        states.append(state)
    weights = np.array([_examples(p) for p in range(CLIENTS)], dtype=np.float64)
    return {k: rule.reduce(np.stack([s[k] for s in states]), weights) for k in start}


RULES = [
    AggregationRule(),
    AggregationRule(name="median"),
    AggregationRule(name="trimmed_mean"),
    AggregationRule(name="krum"),
    AggregationRule(clip_update_norm=0.5),
    AggregationRule(name="median", clip_update_norm=0.5),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.describe())
def test_flower_strategies_aggregate_as_the_numpy_rules_define(rule):
    got, expected = _one_round(rule), _expected(rule)
    start = {k: v.numpy().astype(np.float64) for k, v in _global_state().items()}
    for name in SHAPES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    moved = np.sqrt(sum(np.square(got[k] - start[k]).sum() for k in SHAPES))
    if rule.name == "fedavg" and rule.clip_update_norm is None:
        assert moved > 100  # the attacker drags the plain mean away (the checks below can fail)
    else:
        assert moved < 1.0, rule.describe()  # it does not: honest updates have norm about 0.6


def test_update_norms_before_clipping_are_reported():
    reports: list = []
    _one_round(AggregationRule(clip_update_norm=0.5), reports=reports)
    norms = sorted(reports[0].update_norms.values())
    assert len(norms) == CLIENTS
    assert norms[-1] > 1000 and all(0.5 < norm < 1.0 for norm in norms[:-1])  # the attacker's
    _one_round(AggregationRule(clip_update_norm=100.0), reports=reports)
    assert sorted(reports[1].update_norms.values()) == pytest.approx(norms, rel=1e-6)
    _one_round(AggregationRule(), reports=reports)
    assert reports[2].update_norms == {}  # measured only where they are clipped


def test_every_aggregator_names_a_flower_message_api_strategy():
    for name in AGGREGATORS:
        strategy_name, options = AggregationRule(name=name).flower_strategy()
        strategy = getattr(flower_strategies, strategy_name)(**options)
        assert isinstance(strategy, flower_strategies.FedAvg), name


def test_round_with_too_few_replies_for_the_rule_fails_clearly():
    with pytest.raises(RoundFailed, match=r"2 usable client replies, --aggregation median needs "
                       r"at least 3 \(a median of 2 is their mean\)"):  # fmt: skip
        _one_round(AggregationRule(name="median"), failing={1, 2, 3})
