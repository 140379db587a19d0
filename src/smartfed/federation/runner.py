"""Start a federated run on the chosen engine; every engine runs the same two Flower apps."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from flwr.clientapp import ClientApp

from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.federation.inprocess import InProcessGrid
from smartfed.federation.server_app import run_server
from smartfed.federation.settings import simulation_environment, to_run_config


def quiet_flower() -> None:
    """No telemetry, no update checks, and no per-round INFO log from Flower's strategy.

    SmartFed prints one line per round itself. Importing Flower sets its logger to DEBUG, so the
    level is lowered here, after that import; warnings still show, once (no propagation to the
    root handler, which would print them a second time).
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    flower = logging.getLogger("flwr")
    flower.setLevel(logging.WARNING)
    flower.propagate = False


def run_federated(
    config: RunConfig, *, client_app: ClientApp | None = None
) -> dict[str, Any] | None:
    """Run ``config`` to completion; returns the summary (in-process engine)."""
    quiet_flower()
    if config.engine == "inprocess":
        from smartfed.federation.client_app import app as default_client_app

        grid = InProcessGrid(
            client_app or default_client_app, config.num_clients, to_run_config(config)
        )
        return run_server(grid, config)
    if config.engine == "simulation":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                "--engine simulation needs Ray: pip install 'flwr[simulation]' (or use the "
                "default --engine inprocess, which needs no Ray)"
            )
        from flwr.simulation import run_simulation

        from smartfed.federation.client_app import app as default_client_app
        from smartfed.federation.server_app import app as server_app

        os.environ.update(simulation_environment(config))
        run_simulation(
            server_app=server_app,
            client_app=client_app or default_client_app,
            num_supernodes=config.num_clients,
        )
        return None
    raise ConfigError(f"unknown engine {config.engine!r}")
