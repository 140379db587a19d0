"""Start a federated run on the chosen engine; every engine runs the same two Flower apps."""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.clientapp import ClientApp

from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError
from smartfed.federation.inprocess import InProcessGrid
from smartfed.federation.server_app import run_server
from smartfed.federation.settings import to_run_config
from smartfed.federation.simulation import run_simulation_engine


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


def run_federated(config: RunConfig, *, client_app: ClientApp | None = None) -> dict[str, Any]:
    """Run ``config`` to completion on its engine; return the run's summary."""
    quiet_flower()
    if config.engine == "inprocess":
        from smartfed.federation.client_app import app as default_client_app

        grid = InProcessGrid(
            client_app or default_client_app, config.num_clients, to_run_config(config)
        )
        return run_server(grid, config)
    if config.engine == "simulation":
        return run_simulation_engine(config, client_app=client_app)
    raise ConfigError(f"unknown engine {config.engine!r}")
