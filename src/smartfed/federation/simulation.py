"""The simulation engine: the same two Flower apps on Flower's Ray simulation.

The ServerApp runs in a thread of this process (it writes the run directory and prints the
rounds, as in-process); each ClientApp runs in a Ray actor, a separate process that builds its
own runtime (:func:`smartfed.assembly.runtime.get_runtime`) on its first message. Several
actors train sampled clients in parallel, as many as the resources each client reserves
(``--client_cpus``, ``--client_gpus``) allow; fractional GPUs let several clients share one.

Flower's ``run_simulation`` takes no run config, so the settings travel in
``$SMARTFED_RUN_CONFIG`` (:func:`.settings.simulation_environment`): Ray's workers inherit the
environment this process has when Ray starts. The environment is restored afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp

from smartfed.engine.config import RunConfig
from smartfed.engine.recorder import load_resume_state
from smartfed.errors import ConfigError
from smartfed.federation.settings import simulation_environment

#: Ray's shared-memory object store holds the messages on their way to and from the actors;
#: beyond this it spills to disk. Ray's default (30 % of RAM) is far more than messages need.
OBJECT_STORE_BYTES = 512 * 1024**2
DEFAULT_CLIENT_CPUS = 1.0
_RAY_ENVIRONMENT = {
    "RAY_DISABLE_USAGE_STATS": "1",  # no usage reporting, no prompt about it
    # Hide the GPUs from actors that reserve none (Ray's current default, to change later).
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
}


def client_resources(config: RunConfig, *, gpus_visible: int | None = None) -> dict[str, float]:
    """What each simulated client reserves: ``num_cpus`` and ``num_gpus`` (Ray's names).

    ``--client_gpus`` defaults to one whole GPU per client where clients would train on CUDA
    (``--device`` auto or cuda on a machine with a GPU), else to none: Ray hides the GPUs from
    an actor that reserves none, so a client without a share trains on the CPU.
    """
    gpus_visible = _cuda_devices() if gpus_visible is None else gpus_visible
    cpus = DEFAULT_CLIENT_CPUS if config.client_cpus is None else float(config.client_cpus)
    if config.client_gpus is not None:
        gpus = float(config.client_gpus)
    else:
        gpus = 1.0 if gpus_visible and _wants_cuda(config.device) else 0.0
    return {"num_cpus": cpus, "num_gpus": gpus}


def check_simulation(
    config: RunConfig, *, cpus_visible: int | None = None, gpus_visible: int | None = None
) -> None:
    """Refuse, in one line, what Ray would never schedule (it would wait forever) or what a
    Ray actor cannot use."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "--engine simulation needs Ray: pip install 'flwr[simulation]' (or use the "
            "default --engine inprocess, which needs no Ray)"
        )
    cpus_visible = (os.cpu_count() or 1) if cpus_visible is None else cpus_visible
    gpus_visible = _cuda_devices() if gpus_visible is None else gpus_visible
    resources = client_resources(config, gpus_visible=gpus_visible)
    cpus, gpus = resources["num_cpus"], resources["num_gpus"]
    if cpus > cpus_visible:
        raise ConfigError(
            f"--client_cpus {cpus:g} exceeds this machine's {cpus_visible} CPU cores: no "
            f"simulated client could start"
        )
    if gpus > 0 and not gpus_visible:
        raise ConfigError(
            f"--client_gpus {gpus:g}: PyTorch sees no CUDA GPU here, so Ray could never start "
            f"a client; use --client_gpus 0 (or leave it unset) on this machine"
        )
    if gpus > 1 and not gpus.is_integer():
        raise ConfigError(
            f"--client_gpus {gpus:g}: above 1 it must be a whole number of GPUs (fractions "
            f"below 1 let several clients share one GPU)"
        )
    if gpus > gpus_visible:
        raise ConfigError(
            f"--client_gpus {gpus:g} exceeds the {gpus_visible} GPU(s) visible here: no "
            f"simulated client could start"
        )
    if re.fullmatch(r"cuda:\d+", config.device) and config.device != "cuda:0":
        raise ConfigError(
            f"--device {config.device} does not apply to --engine simulation: Ray gives each "
            f"client its own GPU as cuda:0 (use --device cuda or auto)"
        )
    if config.device.startswith("cuda") and not gpus_visible:
        raise ConfigError(f"--device {config.device}: PyTorch sees no CUDA GPU here")
    if config.device.startswith("cuda") and gpus == 0:
        raise ConfigError(
            f"--device {config.device} with --engine simulation needs --client_gpus above 0: "
            f"Ray hides the GPUs from clients that reserve none"
        )


def backend_config(config: RunConfig, *, cpus_visible: int | None = None) -> dict[str, Any]:
    """Flower's ``backend_config`` for the Ray backend.

    Ray is told about as many CPU cores as the clients of one round can use in parallel (not
    the whole machine): Flower starts one actor per client that fits, and each actor holds
    its own copy of the model.
    """
    cpus_visible = (os.cpu_count() or 1) if cpus_visible is None else cpus_visible
    resources = client_resources(config)
    parallel = max(1, min(config.sample_clients, int(cpus_visible // resources["num_cpus"])))
    return {
        "client_resources": resources,
        "init_args": {
            "num_cpus": max(1, math.ceil(parallel * resources["num_cpus"])),
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "logging_level": "WARNING",
        },
    }


def run_simulation_engine(
    config: RunConfig, *, client_app: ClientApp | None = None
) -> dict[str, Any]:
    """Run ``config`` on Flower's Ray simulation; return the summary the ServerApp wrote."""
    check_simulation(config)
    load_resume_state(config)  # an existing run without --resume: refused before Ray starts
    from flwr.simulation import run_simulation

    from smartfed.federation.client_app import app as default_client_app
    from smartfed.federation.server_app import app as server_app

    environment = {**_RAY_ENVIRONMENT, **simulation_environment(config)}
    # Flower adds PYTHONPATH for its workers; it is put back with the rest.
    with _scoped_environment(environment, also_restore=("PYTHONPATH",)), _quiet_start():
        run_simulation(
            server_app=server_app,
            client_app=client_app or default_client_app,
            num_supernodes=config.num_clients,
            backend_config=backend_config(config),
        )
    summary = Path(config.output_dir) / "summary.json"
    return json.loads(summary.read_text(encoding="utf-8"))


def _wants_cuda(device: str) -> bool:
    return device == "auto" or device.startswith("cuda")


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def _scoped_environment(
    values: Mapping[str, str], also_restore: tuple[str, ...] = ()
) -> Iterator[None]:
    names = {*values, *also_restore}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _DropDeprecation(logging.Filter):
    """Flower 1.42 marks ``run_simulation`` deprecated (in favour of ``flwr run``); SmartFed
    pins Flower, so the notice says nothing the user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)


@contextmanager
def _quiet_start() -> Iterator[None]:
    flower = logging.getLogger("flwr")
    drop = _DropDeprecation()
    flower.addFilter(drop)
    try:
        with warnings.catch_warnings():
            # Ray's notice that a future release stops hiding GPUs from GPU-less actors:
            # SmartFed relies on the current behaviour, which docs/federated-runs.md states.
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
            yield
    finally:
        flower.removeFilter(drop)
