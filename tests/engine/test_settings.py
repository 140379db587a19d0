"""The settings machinery: typed fields with bounds, per-method blocks, and the same values
through every door (flags, TOML, Flower keys, config.json)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from smartfed.assembly.config import SettingValues, config_from_dict, gather
from smartfed.engine.config import RunConfig
from smartfed.engine.settings import MethodSettings, setting
from smartfed.errors import ConfigError
from smartfed.federation.settings import from_run_config, to_run_config
from smartfed.methods import get_method, method_names


@dataclass
class Demo(MethodSettings):
    rate: float = setting(0.1, "a rate", above=0, below=1)
    count: int | None = setting(None, "a count", minimum=2)
    mode: str = setting("a", "a mode", choices=("a", "b"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate": 0.0}, "--rate must be > 0"),
        ({"rate": 1.0}, "--rate must be < 1"),
        ({"rate": float("nan")}, "--rate must be a finite number"),
        ({"count": 1}, "--count must be >= 2"),
        ({"count": True}, "'count' must be a int"),
        ({"count": 2.5}, "'count' must be a int"),
        ({"mode": "c"}, "--mode must be one of a, b"),
        ({"rate": "0.5"}, "'rate' must be a float"),
    ],
)
def test_fields_are_typed_and_bounded(values, message):
    with pytest.raises(ConfigError, match=message):
        Demo(**values)


def test_ints_are_accepted_for_floats_and_none_is_unset():
    assert Demo(count=None).count is None  # None = unset: never bound-checked
    assert Demo(rate=0.5).rate == 0.5
    with pytest.raises(ConfigError, match="--rate must be > 0"):
        Demo(rate=0)  # an int is accepted as a float, then bound-checked


@pytest.mark.parametrize("method", method_names())
def test_every_method_round_trips_through_flower_keys_and_config_json(method):
    config = gather(overrides={"method": method, "num_rounds": 3}).config_for()
    assert from_run_config(to_run_config(config)) == config
    assert config_from_dict(config.to_dict(), source="test") == config
    keys = to_run_config(config)
    assert all("_" not in key.split(".")[-1] for key in keys)  # setting names use dashes
    assert {k.split(".")[0] for k in keys if "." in k} <= {method}


def test_every_method_declares_learning_rate_unless_it_does_not_train():
    for name in method_names():
        cls = get_method(name)
        assert ("learning_rate" in cls.settings_class.setting_names()) == cls.trains, name


def test_bench_values_go_to_the_methods_that_declare_them():
    values = gather(overrides={"topk_experts": 4, "lora_rank": 2, "num_rounds": 2})
    values.check_declared_by(["fedit", "smartfed"])
    smartfed = values.config_for("smartfed", strict=False)
    fedit = values.config_for("fedit", strict=False)
    assert smartfed.settings.topk_experts == 4 and not hasattr(smartfed.settings, "lora_rank")
    assert fedit.settings.lora_rank == 2 and not hasattr(fedit.settings, "topk_experts")
    assert smartfed.num_rounds == fedit.num_rounds == 2
    with pytest.raises(ConfigError, match="--topk_experts is a setting of smartfed, none of which"):
        values.check_declared_by(["fedit", "merge"])
    with pytest.raises(ConfigError, match="not of method fedit"):
        values.config_for("fedit")  # strict: a single run refuses it


def test_an_entrys_overrides_win_and_unset_what_they_make_meaningless():
    values = gather(preset="demo", overrides={"k_min": 2})
    dense = values.config_for("smartfed", {"dense": True, "k_min": None}, strict=False)
    assert dense.settings.dense and dense.settings.k_min is None
    assert values.config_for("smartfed").settings.k_min == 2


def test_shared_and_method_settings_never_share_a_name():
    shared = set(RunConfig.setting_names())
    for name in method_names():
        assert not shared & set(get_method(name).settings_class.setting_names()), name


def test_unknown_settings_name_the_known_ones():
    expected = "somewhere: unknown setting 'topk'; known settings: "
    with pytest.raises(ConfigError, match=expected) as info:
        SettingValues().add({"topk": 1}, "somewhere")
    assert "topk_experts" in str(info.value)
