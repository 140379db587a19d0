"""Carry a ``RunConfig`` through Flower's run config and node config.

In-process runs pass the whole resolved config as one JSON string (``smartfed-config``).
Deployed runs may also set single keys (``flwr run -c "num_rounds=3"``) and each SuperNode may
point at its own local copies with node config keys ``model-path``, ``data-dir`` and
``pool-manifest``. Flower configs cannot hold ``None``: an empty string stands for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from smartfed.engine.config import RunConfig, config_from_dict

CONFIG_KEY = "smartfed-config"
# Flower's simulation entry point takes no run config; the runner passes it through this
# variable instead (Ray workers inherit the environment).
CONFIG_ENV = "SMARTFED_RUN_CONFIG"
_NODE_OVERRIDES = {
    "model-path": "model_name_or_path",
    "data-dir": "data_dir",
    "pool-manifest": "pool_manifest",
}


def to_run_config(config: RunConfig) -> dict[str, Any]:
    return {CONFIG_KEY: json.dumps(config.to_dict())}


def from_run_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
) -> RunConfig:
    # Single keys first, the whole-config JSON last: a deployed app declares every key with its
    # default, which must not overwrite a JSON config given on purpose.
    data: dict[str, Any] = {
        key.replace("-", "_"): None if value == "" else value
        for key, value in run_config.items()
        if key != CONFIG_KEY
    }
    if run_config.get(CONFIG_KEY):
        data.update(json.loads(str(run_config[CONFIG_KEY])))
    elif os.environ.get(CONFIG_ENV):
        data.update(json.loads(os.environ[CONFIG_ENV]))
    for key, field in _NODE_OVERRIDES.items():
        if node_config and node_config.get(key):
            data[field] = node_config[key]
    return config_from_dict(data, source="Flower run config")
