"""smartfed.bench.tables.grid_edge: which tuning choices sit at an end of their grid."""

from __future__ import annotations

import pytest

from smartfed.bench.tables import grid_edge


def _grid(*values, name="learning_rate"):
    return [{"point": {name: value}} for value in values]


@pytest.mark.parametrize(("chosen", "edge"), [(0.002, "lowest"), (0.01, None), (0.05, "highest")])
def test_ends_of_a_three_point_grid(chosen, edge):
    assert grid_edge(_grid(0.002, 0.01, 0.05), {"learning_rate": chosen}) == edge


def test_the_grid_order_does_not_matter():
    assert grid_edge(_grid(0.05, 0.002, 0.01), {"learning_rate": 0.05}) == "highest"


@pytest.mark.parametrize(
    ("grid", "chosen"),
    [
        (_grid(0.002, 0.01), {"learning_rate": 0.01}),  # two points: every choice is an end
        ([], None),  # untuned
        (_grid(0.002, 0.01, 0.05), None),
        (_grid("dense", "k32", "k32_eeqa", name="routing"), {"routing": "k32_eeqa"}),
        (
            [{"point": {"learning_rate": lr, "router_rank": 1}} for lr in (0.002, 0.01, 0.05)],
            {"learning_rate": 0.05, "router_rank": 1},
        ),
    ],
)
def test_no_edge_where_it_means_nothing(grid, chosen):
    assert grid_edge(grid, chosen) is None
