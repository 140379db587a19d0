"""Flower internals sit behind one adapter that refuses untested Flower versions."""

from __future__ import annotations

import ast
from pathlib import Path

import flwr
import pytest
from flwr.clientapp import ClientApp

from smartfed.errors import ConfigError
from smartfed.federation import flower_compat
from smartfed.federation.inprocess import InProcessGrid

FEDERATION = Path(flower_compat.__file__).parent
# Flower's public packages (their own __all__); their submodules are internals.
PUBLIC_FLOWER = {"flwr", "flwr.app", "flwr.clientapp", "flwr.common", "flwr.serverapp",
                 "flwr.serverapp.strategy", "flwr.simulation",
                 # the legacy API that SecAgg+ needs (federation/secure_aggregation.py)
                 "flwr.server", "flwr.server.strategy", "flwr.server.workflow",
                 "flwr.client.mod"}  # fmt: skip


@pytest.mark.parametrize("version", ["1.42.0", "1.42.7", "1.42.1rc2"])
def test_tested_versions_pass(version):
    flower_compat.check_flower_version(version)


@pytest.mark.parametrize("version", ["1.43.0", "1.41.2", "2.42.0", "1.4", "nightly"])
def test_untested_versions_fail_with_one_line(version):
    with pytest.raises(ConfigError) as caught:
        flower_compat.check_flower_version(version)
    message = str(caught.value)
    assert "\n" not in message and version in message and "1.42.x" in message


def test_the_in_process_grid_checks_the_installed_flower(monkeypatch):
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    with pytest.raises(ConfigError, match=r"Flower 1\.43\.0 is untested"):
        InProcessGrid(ClientApp(), num_nodes=2, run_config={})
    monkeypatch.setattr(flwr, "__version__", "1.42.5")
    grid = InProcessGrid(ClientApp(), num_nodes=2, run_config={"k": 1})
    assert list(grid.get_node_ids()) == [1, 2]
    assert grid.run.override_config == {"k": 1}


def _flower_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return {m for m in modules if m == "flwr" or m.startswith("flwr.")}


def test_only_the_adapter_touches_flower_internals():
    for path in sorted(FEDERATION.glob("*.py")):
        if path.name == "flower_compat.py":
            continue
        text = path.read_text()
        internal = _flower_imports(path) - PUBLIC_FLOWER
        assert not internal, f"{path.name} imports Flower internals {internal}"
        assert "__dict__[" not in text, f"{path.name} writes a private attribute"
