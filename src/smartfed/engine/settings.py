"""Settings dataclasses: one declaration per setting, from which everything else is generated.

A setting is a dataclass field made with :func:`setting` (default, help text, optional choices
and bounds in its metadata). From those fields come the ``smartfed run`` flags, the TOML keys,
the Flower run-config keys (``num-rounds``, ``smartfed.topk-experts``) and the generated
``flower-app/pyproject.toml``; validation runs in ``__post_init__``, before any model loads.
Each method owns a :class:`MethodSettings` subclass; :class:`smartfed.engine.config.RunConfig`
holds the shared settings plus the chosen method's block.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, ClassVar

from smartfed.errors import ConfigError

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field that is a user-facing setting (flag, TOML key, Flower key).

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones; ``None``
    values (a setting left unset) are never bound-checked.
    """
    bounds = {"minimum": minimum, "above": above, "below": below, "maximum": maximum}
    metadata = {"help": help, "choices": choices, **bounds}
    return field(default=default, metadata=metadata)


def kind_of(item: Field) -> tuple[type, bool]:
    """(python type, optional) of a setting field, from its annotation string."""
    text = str(item.type).replace(" ", "")
    optional = text.endswith("|None")
    base = text.removesuffix("|None")
    if base not in _TYPES:
        raise TypeError(f"setting '{item.name}' has unsupported type {item.type!r}")
    return _TYPES[base], optional


def coerce(item: Field, value: Any, source: str) -> Any:
    """Check ``value`` against the field's type (ints are accepted for floats)."""
    kind, optional = kind_of(item)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: '{item.name}' must be set (a {kind.__name__})")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ConfigError(f"{source}: '{item.name}' must be a {kind.__name__}, got {value!r}")
    return value


def _check_bounds(item: Field, value: Any) -> None:
    meta = item.metadata
    flag = f"--{item.name}"
    if value is None:
        return
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{flag} must be one of {', '.join(meta['choices'])}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value!r}")
    checks = (
        ("minimum", lambda v, b: v >= b, ">="),
        ("above", lambda v, b: v > b, ">"),
        ("below", lambda v, b: v < b, "<"),
        ("maximum", lambda v, b: v <= b, "<="),
    )
    for key, holds, sign in checks:
        bound = meta.get(key)
        if bound is not None and not holds(value, bound):
            raise ConfigError(f"{flag} must be {sign} {bound:g}, got {value!r}")


@dataclass
class Settings:
    """Base of every settings block: typed, bound-checked and validated on construction."""

    def __post_init__(self) -> None:
        for item in self.setting_fields():
            value = coerce(item, getattr(self, item.name), type(self).__name__)
            setattr(self, item.name, value)
            _check_bounds(item, value)
        self.check()

    def check(self) -> None:
        """Cross-field rules of a subclass (raise ConfigError); fields are already typed."""

    @classmethod
    def setting_fields(cls) -> list[Field]:
        return [f for f in fields(cls) if "help" in f.metadata]

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in cls.setting_fields()]

    @classmethod
    def field_named(cls, name: str) -> Field:
        for item in cls.setting_fields():
            if item.name == name:
                return item
        raise KeyError(name)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {
            f.name: f.default
            for f in cls.setting_fields()
            if f.default is not MISSING  # every setting has one; a guard for subclasses
        }

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.setting_fields()}


@dataclass
class MethodSettings(Settings):
    """A method's own settings block (each method subclasses it; this one declares none).

    ``learning_rate`` is, by convention, the AdamW rate of whatever the method trains, so one
    name sweeps and launches every method; each method sets its own default.
    """

    # Settings that another setting of the same block makes meaningless are None by default
    # and refused when given in that situation (see SmartFedSettings.check): never ignored.
    label: ClassVar[str] = "method"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dp_refusal(self) -> str | None:
        """Why these settings cannot run under central DP (one line naming what to use
        instead), or None. DP privatises only the averaged state: a method whose clients'
        metrics steer what the server broadcasts must refuse it (SmartFed's EEQA)."""
        return None

    @classmethod
    def inapplicable(cls, values: dict[str, Any]) -> set[str]:
        """Settings that ``values`` make meaningless (e.g. EEQA's under ``dense``): refused
        when given explicitly, dropped when they only come from a preset or an old config."""
        return set()

    @classmethod
    def from_format_1(cls, flat: dict[str, Any]) -> dict[str, Any]:
        """This block from a config.json written before per-method settings (SmartFed 0.1),
        where every method's settings sat in one flat dict (each method read its own)."""
        block = {k: flat[k] for k in cls.setting_names() if k in flat}
        dropped = cls.inapplicable(block)
        return {k: v for k, v in block.items() if k not in dropped}


def flower_key(name: str, namespace: str | None = None) -> str:
    """The Flower run-config key of a setting: ``num-rounds``, ``smartfed.topk-experts``."""
    key = name.replace("_", "-")
    return f"{namespace}.{key}" if namespace else key


def to_flower_value(value: Any) -> Any:
    """Flower configs cannot hold None: an empty string stands for it."""
    return "" if value is None else value


def from_flower_value(item: Field, value: Any, source: str) -> Any:
    kind, optional = kind_of(item)
    if value == "" and (optional or kind is not str):
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return coerce(item, value, source)
