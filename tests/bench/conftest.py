"""The bench runs on the same tiny federated setup as the federation tests."""

from ..federation.conftest import tiny_run_config, tiny_task  # noqa: F401
