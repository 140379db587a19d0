"""The method registry: ``smartfed run --method NAME`` looks names up here.

A new method is one module that defines a :class:`FederatedMethod` subclass (with its settings
class) decorated with ``@register_method``. Built-in methods are imported by
``smartfed/methods/__init__.py``; anything else (a method, a router design) is loaded from the
modules or ``.py`` files named in ``$SMARTFED_PLUGINS`` (comma-separated), so one file outside
the package registers itself without touching SmartFed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from smartfed.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from smartfed.engine.config import RunConfig
    from smartfed.engine.method import FederatedMethod
    from smartfed.pool import LoraPool

PLUGINS_ENV = "SMARTFED_PLUGINS"
_METHODS: dict[str, type[FederatedMethod]] = {}
_LOADED_PLUGINS: set[str] = set()


def register_method(cls: type[FederatedMethod]) -> type[FederatedMethod]:
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method '{cls.name}' is registered twice")
    _METHODS[cls.name] = cls
    return cls


def load_plugins(spec: str | None = None) -> None:
    """Import every module or file named in ``spec`` (default: ``$SMARTFED_PLUGINS``), once."""
    spec = os.environ.get(PLUGINS_ENV, "") if spec is None else spec
    for item in (part.strip() for part in spec.split(",")):
        if not item or item in _LOADED_PLUGINS:
            continue
        _LOADED_PLUGINS.add(item)
        try:
            if item.endswith(".py"):
                path = Path(item).resolve()
                name = f"smartfed_plugin_{path.stem}"
                spec_obj = importlib.util.spec_from_file_location(name, path)
                if spec_obj is None or spec_obj.loader is None or not path.is_file():
                    raise FileNotFoundError(path)
                module = importlib.util.module_from_spec(spec_obj)
                sys.modules[name] = module
                spec_obj.loader.exec_module(module)
            else:
                importlib.import_module(item)
        except (ImportError, FileNotFoundError) as exc:
            _LOADED_PLUGINS.discard(item)
            raise ConfigError(f"${PLUGINS_ENV}: cannot load plugin '{item}': {exc}") from None


def _load_builtin() -> None:
    import smartfed.methods  # noqa: F401  (importing the package registers the built-ins)

    load_plugins()


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
