"""Resolve presets, TOML files and flags into a :class:`RunConfig` for one method.

Precedence: built-in defaults < preset < ``--config FILE.toml`` < explicit flags. A TOML file may
also hold one table per method (``[methods.smartfed]``): its values apply to that method only
(and its ablations), over the file's top-level values and under flags, so one bench can give
each method its own learning rate. A value is a shared setting (a RunConfig field) or a method
setting (a field of some method's settings class). Method settings a user gave explicitly (TOML
or flag) must be declared by the chosen method, otherwise the run is refused with one line
naming the method and its settings; a preset's method settings apply where the method declares
them (a preset serves every method). A bench resolves the same values once per entry
(:meth:`SettingValues.config_for`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.engine.config import CONFIG_FORMAT, RunConfig
from smartfed.engine.settings import MethodSettings, coerce
from smartfed.errors import ConfigError
from smartfed.methods.registry import get_method, method_names

PRESETS: dict[str, dict[str, Any]] = {
    # A pipeline check on the real default model: about a minute on 2 CPU cores.
    "smoke": dict(
        task="gsm8k",
        lora_pool="smoke_math_a,smoke_math_b",
        num_clients=2,
        sample_clients=2,
        num_rounds=2,
        local_steps=2,
        batch_size=2,
        max_seq_len=128,
        topk_experts=4,
        eval_samples=8,
        eval_batch_size=8,
        output_dir="runs/smoke",
    ),
    # The seed's composition (Chinese math from a Chinese-chat and an English-math module),
    # sized for a few minutes on 2 CPU cores with the committed pool modules and bundled data,
    # and small enough that `smartfed bench --preset demo` can run every method. No pool here:
    # the task's own (cn_math: cn_chat,en_math), so `--task math_code` gets en_math,en_code.
    "demo": dict(
        task="cn_math",
        num_clients=8,
        sample_clients=2,
        num_rounds=4,
        local_steps=4,
        batch_size=4,
        max_seq_len=256,
        eval_samples=16,
        # The target set (the task's other benchmark) is scored every round; the
        # in-distribution loss only at the end, to keep evaluation from dominating the run.
        eval_every=4,
        output_dir="runs/demo",
    ),
    # The paper's protocol (docs/design.md §1.5), for GPU users.
    "paper": dict(
        num_clients=20,
        sample_clients=2,
        num_rounds=20,
        local_steps=10,
        batch_size=16,
        # Only the protocol: the method settings are each method's defaults (SmartFed's are the
        # measured best trade-off); training_scripts/ gives the paper's own (linear router,
        # lr 5e-4, K = 32, EEQA) explicitly.
        max_seq_len=512,
        eval_samples=250,
        output_dir="runs/paper",
    ),
}


def method_settings_index() -> dict[str, list[str]]:
    """Method setting name -> the methods declaring it (registry order)."""
    index: dict[str, list[str]] = {}
    for name in method_names():
        for setting_name in get_method(name).settings_class.setting_names():
            index.setdefault(setting_name, []).append(name)
    return index


def _coerce_value(name: str, value: Any, source: str) -> Any:
    if name in RunConfig.setting_names():
        return coerce(RunConfig.field_named(name), value, source)
    owners = method_settings_index().get(name)
    if not owners:
        known = sorted({*RunConfig.setting_names(), *method_settings_index()})
        raise ConfigError(f"{source}: unknown setting '{name}'; known settings: {', '.join(known)}")
    return coerce(get_method(owners[0]).settings_class.field_named(name), value, source)


def _refusal(name: str, method: str) -> str:
    owners = method_settings_index().get(name, [])
    declared = get_method(method).settings_class.setting_names()
    own = ", ".join(declared) if declared else "none"
    return (
        f"--{name} is a setting of {', '.join(owners)}, not of method {method} "
        f"({method}'s settings: {own})"
    )


@dataclass
class SettingValues:
    """Values gathered from a preset, a TOML file and flags, before choosing a method."""

    shared: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)  # explicit: refused where undeclared
    preset_method: dict[str, Any] = field(default_factory=dict)  # applied where declared
    # TOML [methods.NAME] tables: explicit, for that method only; flags still win over them.
    per_method: dict[str, dict[str, Any]] = field(default_factory=dict)
    from_flags: set[str] = field(default_factory=set)

    def add_per_method(self, tables: Any, source: str) -> None:
        if not isinstance(tables, dict):
            raise ConfigError(f"{source}: 'methods' must be a table of [methods.NAME] tables")
        for method, values in tables.items():
            settings_class = get_method(method).settings_class  # unknown names: one line
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [methods.{method}] must be a table of settings")
            declared = settings_class.setting_names()
            for name, value in values.items():
                if name not in declared:
                    own = ", ".join(declared) if declared else "none"
                    raise ConfigError(
                        f"{source}: [methods.{method}] {name} is not a setting of {method} "
                        f"({method}'s settings: {own})"
                    )
                where = f"{source} [methods.{method}]"
                coerced = coerce(settings_class.field_named(name), value, where)
                self.per_method.setdefault(method, {})[name] = coerced

    def add(
        self, values: dict[str, Any], source: str, *, from_preset: bool = False,
        from_flags: bool = False,
    ) -> None:  # fmt: skip
        for name, value in values.items():
            value = _coerce_value(name, value, source)
            if from_flags:
                self.from_flags.add(name)
            if name in RunConfig.setting_names():
                self.shared[name] = value
            elif from_preset:
                self.preset_method[name] = value
            else:
                self.method[name] = value

    def config_for(
        self,
        method: str | None = None,
        overrides: dict[str, Any] | None = None,
        *,
        strict: bool = True,
    ) -> RunConfig:
        """The RunConfig of ``method`` (default: the chosen one); ``overrides`` (a bench
        entry's) may set shared and method settings and win over everything else. Not
        ``strict`` (a bench entry): explicit method settings apply where declared."""
        shared = dict(self.shared)
        method = method or shared.get("method") or RunConfig.method
        settings_class = get_method(method).settings_class
        declared = set(settings_class.setting_names())
        for name in self.method:
            if strict and name not in declared:
                raise ConfigError(_refusal(name, method))
        explicit = {k: v for k, v in self.method.items() if k in declared}
        own = self.per_method.get(method, {})
        explicit.update({k: v for k, v in own.items() if k not in self.from_flags})
        for name, value in (overrides or {}).items():
            if name in RunConfig.setting_names():
                shared[name] = value
            else:
                explicit[name] = value
        preset = {k: v for k, v in self.preset_method.items() if k in declared}
        # A preset serves every variant: what the explicit settings make meaningless (a
        # preset's K under an explicit --dense) is dropped, never refused.
        dropped = settings_class.inapplicable({**preset, **explicit}) - set(explicit)
        values = {k: v for k, v in preset.items() if k not in dropped}
        values.update(explicit)
        shared["method"] = method
        return RunConfig(**shared, settings=settings_class(**values))

    def check_declared_by(self, methods: list[str]) -> None:
        """A bench: every explicit method setting must be declared by one of its methods."""
        index = method_settings_index()
        for name in self.method:
            if not set(index.get(name, [])) & set(methods):
                raise ConfigError(
                    f"--{name} is a setting of {', '.join(index.get(name, []))}, none of which "
                    f"this bench runs ({', '.join(dict.fromkeys(methods))})"
                )


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept either top-level keys or a [smartfed] table.
    return data.get("smartfed", data)


def gather(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> SettingValues:
    """Defaults < preset < TOML file < explicit overrides (None values are ignored)."""
    values = SettingValues()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        values.add({**PRESETS[preset], "preset": preset}, f"preset {preset}", from_preset=True)
    if config_file is not None:
        data = load_toml(config_file)
        if "methods" in data:
            values.add_per_method(data.pop("methods"), str(config_file))
        values.add(data, str(config_file))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.add(given, "command line", from_flags=True)
    return values


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """The RunConfig of one run (``smartfed run``)."""
    return gather(preset=preset, config_file=config_file, overrides=overrides).config_for()


def config_from_dict(data: dict[str, Any], *, source: str) -> RunConfig:
    """A RunConfig from a saved config.json (either format)."""
    data = dict(data)
    data.pop("smartfed_version", None)
    if "method_settings" not in data:
        return _from_format_1(data, source)
    data.pop("config_format", None)
    block = data.pop("method_settings") or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{source}: method_settings is damaged (not a table)")
    method = data.get("method", RunConfig.method)
    settings_class = get_method(method).settings_class
    shared = {k: coerce(RunConfig.field_named(k), v, source) for k, v in data.items()
              if _is_shared(k, source)}  # fmt: skip
    unknown = sorted(set(block) - set(settings_class.setting_names()))
    if unknown:
        raise ConfigError(f"{source}: method {method} has no setting(s) {', '.join(unknown)}")
    return RunConfig(**shared, settings=settings_class(**block))


def _is_shared(name: str, source: str) -> bool:
    if name not in RunConfig.setting_names():
        raise ConfigError(f"{source}: unknown shared setting '{name}'")
    return True


def _from_format_1(data: dict[str, Any], source: str) -> RunConfig:
    """Configs written before method settings existed: one flat dict of 42 fields, where each
    method read its own and ignored the rest. Keep what the method read; drop the others."""
    method = data.get("method", "smartfed")
    settings_class = get_method(method).settings_class
    block = settings_class.from_format_1(data)
    shared = {k: v for k, v in data.items() if k in RunConfig.setting_names()}
    if shared.get("partition", "iid") == "iid":
        shared.pop("dirichlet_alpha", None)
        shared.pop("partition_field", None)
    elif shared.get("partition") == "natural":
        shared.pop("dirichlet_alpha", None)
    try:
        return RunConfig(**shared, settings=settings_class(**block))
    except ConfigError as exc:
        raise ConfigError(f"{source} (written by SmartFed 0.1): {exc}") from None


def is_current_format(data: dict[str, Any]) -> bool:
    return data.get("config_format") == CONFIG_FORMAT


__all__ = [
    "PRESETS",
    "MethodSettings",
    "SettingValues",
    "config_from_dict",
    "gather",
    "is_current_format",
    "load_toml",
    "method_settings_index",
    "resolve_config",
]
