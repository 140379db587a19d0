"""Split examples among federated clients with Flower Datasets' partitioners.

Schemes (a registry: add one with :func:`register_partitioner`):

* ``iid``: the examples are shuffled with ``numpy.random.default_rng(seed)`` and cut into
  ``num_clients`` contiguous shards by ``IidPartitioner`` (sizes differ by at most one).
* ``dirichlet``: ``DirichletPartitioner`` over the discrete meta ``field`` (for GSM8K use
  ``answer_bucket``; a dataset's default is ``DatasetSpec.label_field``). For each label value the
  client shares are drawn from Dirichlet(``alpha``); small ``alpha`` gives skewed clients.
  Every client gets at least ``min_partition_size`` (default 1) examples: Flower re-draws up to
  10 times, after which this raises ConfigError. ``self_balancing`` (default False, plain
  Dirichlet) stops feeding clients that already hold more than the average.
* ``natural``: ``NaturalIdPartitioner``: one client per distinct value of ``field``, clients in
  sorted order of the values; the number of values must equal ``num_clients``.

The result is a list (one per client) of sorted indices into the examples; every example goes to
exactly one client. All schemes are deterministic given ``seed``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from smartfed.data.examples import Example
from smartfed.errors import ConfigError

_INDEX = "index"
_LABEL = "label"

SchemeFn = Callable[..., list[list[int]]]
PARTITIONERS: dict[str, SchemeFn] = {}
NEEDS_FIELD: set[str] = set()


def register_partitioner(name: str, *, needs_field: bool = False) -> Callable[[SchemeFn], SchemeFn]:
    """Register ``fn(examples, num_clients, *, seed, alpha, field, **options) -> indices``."""

    def decorator(fn: SchemeFn) -> SchemeFn:
        if name in PARTITIONERS:
            raise ValueError(f"partition scheme {name!r} is already registered")
        PARTITIONERS[name] = fn
        if needs_field:
            NEEDS_FIELD.add(name)
        return fn

    return decorator


def partition_examples(
    examples: Sequence[Example],
    num_clients: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    field: str | None = None,
    min_partition_size: int = 1,
    self_balancing: bool = False,
) -> list[list[int]]:
    """Indices of ``examples`` for each of ``num_clients`` clients (see the module docstring)."""
    if scheme not in PARTITIONERS:
        raise ConfigError(
            f"unknown partition scheme {scheme!r}; choose one of: {', '.join(PARTITIONERS)}"
        )
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > len(examples):
        raise ConfigError(
            f"num_clients={num_clients} is more than the {len(examples)} examples to partition"
        )
    if scheme in NEEDS_FIELD and not field:
        raise ConfigError(
            f"partition scheme {scheme!r} needs a meta field to partition by "
            "(e.g. answer_bucket for gsm8k)"
        )
    partitions = PARTITIONERS[scheme](
        examples,
        num_clients,
        seed=seed,
        alpha=alpha,
        field=field,
        min_partition_size=min_partition_size,
        self_balancing=self_balancing,
    )
    partitions = [sorted(int(i) for i in part) for part in partitions]
    # Invariants every scheme must meet: a cover of all examples, disjoint, nobody empty.
    assert len(partitions) == num_clients, (len(partitions), num_clients)
    assert sorted(i for part in partitions for i in part) == list(range(len(examples)))
    assert all(partitions), [len(part) for part in partitions]
    return partitions


def field_values(examples: Sequence[Example], field: str) -> list[Any]:
    """``example.meta[field]`` for every example, as one column type (ints, or else strings)."""
    values = []
    for i, example in enumerate(examples):
        if field not in example.meta or example.meta[field] is None:
            known = ", ".join(example.meta) or "none"
            raise ConfigError(
                f"partition field {field!r} is missing from example {i}'s meta "
                f"(meta fields: {known})"
            )
        values.append(example.meta[field])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return values
    if all(isinstance(v, str) for v in values):
        return values
    # Mixed or other types (floats, bools, ...): compare them as text.
    return [str(v) for v in values]


def _dataset(columns: dict[str, list[Any]]) -> Any:
    import datasets  # imported lazily: heavy, and only needed when partitioning

    return datasets.Dataset.from_dict(columns)


@register_partitioner("iid")
def _iid(examples: Sequence[Example], num_clients: int, *, seed: int, **_: Any) -> list[list[int]]:
    from flwr_datasets.partitioner import IidPartitioner

    order = np.random.default_rng(seed).permutation(len(examples)).tolist()
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = _dataset({_INDEX: order})
    return [partitioner.load_partition(i)[_INDEX] for i in range(num_clients)]


@register_partitioner("dirichlet", needs_field=True)
def _dirichlet(
    examples: Sequence[Example],
    num_clients: int,
    *,
    seed: int,
    alpha: float,
    field: str,
    min_partition_size: int = 1,
    self_balancing: bool = False,
    **_: Any,
) -> list[list[int]]:
    from flwr_datasets.partitioner import DirichletPartitioner

    if not alpha > 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_partition_size < 1:
        raise ConfigError(f"min_partition_size must be >= 1, got {min_partition_size}")
    if min_partition_size * num_clients > len(examples):
        raise ConfigError(
            f"{num_clients} clients x min_partition_size {min_partition_size} is more than the "
            f"{len(examples)} examples"
        )
    labels = field_values(examples, field)
    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by=_LABEL,
        alpha=float(alpha),
        min_partition_size=min_partition_size,
        self_balancing=self_balancing,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = _dataset({_INDEX: list(range(len(examples))), _LABEL: labels})
    try:
        with warnings.catch_warnings():
            # Flower warns on every re-draw that misses min_partition_size; we report failure.
            warnings.simplefilter("ignore", UserWarning)
            return [partitioner.load_partition(i)[_INDEX] for i in range(num_clients)]
    except ValueError as exc:
        if "max number of attempts" not in str(exc):
            raise
        raise ConfigError(
            f"dirichlet partition by {field!r} (alpha={alpha}) left a client with fewer than "
            f"{min_partition_size} examples in 11 draws; raise alpha, lower num_clients "
            "or use more examples"
        ) from None


@register_partitioner("natural", needs_field=True)
def _natural(
    examples: Sequence[Example], num_clients: int, *, field: str, **_: Any
) -> list[list[int]]:
    from flwr_datasets.partitioner import NaturalIdPartitioner

    labels = field_values(examples, field)
    partitioner = NaturalIdPartitioner(partition_by=_LABEL)
    partitioner.dataset = _dataset({_INDEX: list(range(len(examples))), _LABEL: labels})
    groups = partitioner.num_partitions
    if groups != num_clients:
        values = sorted(set(labels))
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise ConfigError(
            f"natural partition by {field!r}: the field has {groups} distinct values ({shown}) "
            f"but num_clients={num_clients}; set num_clients={groups}"
        )
    with _quiet_tqdm():
        return [partitioner.load_partition(i)[_INDEX] for i in range(num_clients)]


@contextmanager
def _quiet_tqdm() -> Iterator[None]:
    """Silence the progress bar NaturalIdPartitioner draws while grouping indices."""
    import flwr_datasets.partitioner.natural_id_partitioner as module

    original = module.tqdm
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = original


def partition_stats(
    partitions: Sequence[Sequence[int]], examples: Sequence[Example], field: str | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready dict per client: ``client``, ``size`` and, with ``field``, ``histogram``
    (label value -> count, in sorted label order)."""
    labels = field_values(examples, field) if field else None
    stats = []
    for client, part in enumerate(partitions):
        entry: dict[str, Any] = {"client": client, "size": len(part)}
        if labels is not None:
            counts = Counter(labels[i] for i in part)
            entry["histogram"] = {key: counts[key] for key in sorted(counts)}
        stats.append(entry)
    return stats
