"""The method registry: ``smartfed run --method NAME`` looks names up here.

A new method is a new module that defines a :class:`FederatedMethod` subclass decorated with
``@register_method`` and is imported by ``smartfed/methods/__init__.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smartfed.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from smartfed.engine.config import RunConfig
    from smartfed.engine.method import FederatedMethod
    from smartfed.pool import LoraPool

_METHODS: dict[str, type[FederatedMethod]] = {}


def register_method(cls: type[FederatedMethod]) -> type[FederatedMethod]:
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method '{cls.name}' is registered twice")
    _METHODS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    import smartfed.methods  # noqa: F401  (importing the package registers the built-ins)


def method_names() -> list[str]:
    _load_builtin()
    return list(_METHODS)


def get_method(name: str) -> type[FederatedMethod]:
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'; known methods: {', '.join(_METHODS)}"
        ) from None


def build_method(config: RunConfig, base_model: nn.Module, pool: LoraPool) -> FederatedMethod:
    return get_method(config.method)(base_model, pool, config)
