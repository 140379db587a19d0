"""Client partitions through flwr-datasets partitioners."""

from __future__ import annotations

import numpy as np
import pytest

from smartfed.data import Example, load_examples, partition_examples, partition_stats
from smartfed.errors import ConfigError


def _examples(n: int, num_labels: int = 5) -> list[Example]:
    return [
        Example(
            prompt=f"p{i}", response=f"r{i}", meta={"label": i % num_labels, "src": f"s{i % 3}"}
        )
        for i in range(n)
    ]


def _check_cover(parts: list[list[int]], n: int, k: int) -> None:
    assert len(parts) == k
    assert all(parts) and all(part == sorted(part) for part in parts)
    assert sorted(i for part in parts for i in part) == list(range(n))


def test_iid_balanced_and_seeded() -> None:
    examples = _examples(103)
    parts = partition_examples(examples, 10, "iid", seed=0)
    _check_cover(parts, 103, 10)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= 1
    assert parts == partition_examples(examples, 10, "iid", seed=0)
    assert parts != partition_examples(examples, 10, "iid", seed=1)
    assert parts[0] != list(range(len(parts[0])))  # shuffled, not contiguous


def _mean_tv(parts: list[list[int]], labels: np.ndarray, num_labels: int) -> float:
    overall = np.bincount(labels, minlength=num_labels) / len(labels)
    tvs = []
    for part in parts:
        hist = np.bincount(labels[part], minlength=num_labels) / len(part)
        tvs.append(0.5 * np.abs(hist - overall).sum())
    return float(np.mean(tvs))


def test_dirichlet_seeded_and_skewed() -> None:
    examples = _examples(600, num_labels=6)
    labels = np.array([e.meta["label"] for e in examples])
    skewed = partition_examples(examples, 5, "dirichlet", seed=4, alpha=0.1, field="label")
    _check_cover(skewed, 600, 5)
    assert skewed == partition_examples(examples, 5, "dirichlet", seed=4, alpha=0.1, field="label")
    assert skewed != partition_examples(examples, 5, "dirichlet", seed=5, alpha=0.1, field="label")
    flat = partition_examples(examples, 5, "dirichlet", seed=4, alpha=1000.0, field="label")
    _check_cover(flat, 600, 5)
    assert _mean_tv(skewed, labels, 6) > 0.35
    assert _mean_tv(flat, labels, 6) < 0.1


def test_dirichlet_on_bundled_gsm8k(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTFED_DATA_DIR", raising=False)
    examples = load_examples("gsm8k", "train")
    parts = partition_examples(examples, 20, "dirichlet", seed=0, field="answer_bucket")
    _check_cover(parts, len(examples), 20)
    stats = partition_stats(parts, examples, field="answer_bucket")
    assert [s["client"] for s in stats] == list(range(20))
    assert all(sum(s["histogram"].values()) == s["size"] >= 1 for s in stats)
    assert set().union(*(s["histogram"] for s in stats)) == {1, 2, 3, 4}


def test_natural_groups_by_field() -> None:
    examples = _examples(30)
    parts = partition_examples(examples, 3, "natural", seed=0, field="src")
    _check_cover(parts, 30, 3)
    for client, part in enumerate(parts):
        assert {examples[i].meta["src"] for i in part} == {f"s{client}"}
    stats = partition_stats(parts, examples, field="src")
    assert stats[1] == {"client": 1, "size": 10, "histogram": {"s1": 10}}
    assert partition_stats(parts, examples)[0] == {"client": 0, "size": 10}
    with pytest.raises(
        ConfigError, match=r"'src': the field has 3 distinct values .* num_clients=4"
    ):
        partition_examples(examples, 4, "natural", seed=0, field="src")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_clients": 2, "scheme": "zipf"}, "unknown partition scheme 'zipf'"),
        ({"num_clients": 0, "scheme": "iid"}, "num_clients must be an integer >= 1"),
        ({"num_clients": 11, "scheme": "iid"}, "num_clients=11 is more than the 10 examples"),
        ({"num_clients": 2, "scheme": "dirichlet"}, "needs a meta field"),
        (
            {"num_clients": 2, "scheme": "natural", "field": "nope"},
            "'nope' is missing .*label, src",
        ),
        ({"num_clients": 2, "scheme": "dirichlet", "field": "label", "alpha": 0}, "alpha must be"),
    ],
)
def test_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        partition_examples(_examples(10), seed=0, **kwargs)


def test_infeasible_dirichlet_is_a_config_error() -> None:
    # 2 labels, 8 clients, tiny alpha: some client always ends up empty.
    examples = _examples(16, num_labels=2)
    with pytest.raises(ConfigError, match="raise alpha"):
        partition_examples(examples, 8, "dirichlet", seed=0, alpha=0.01, field="label")
