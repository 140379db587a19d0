"""The shared tuner plumbing: injection / unload, token masks, trainable state, save / load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from smartfed.errors import ConfigError, PoolError
from smartfed.pool import load_pool
from smartfed.tuners.base import PoolTuner, TunerConfig
from smartfed.tuners.lorahub import LoraHubConfig, LoraHubModel
from smartfed.tuners.mole import MoleConfig, MoleModel
from smartfed.tuners.more import MoreConfig, MoreModel

from ..conftest import make_tiny_llama

TUNERS = {
    "more": (MoreModel, MoreConfig),
    "mole": (MoleModel, MoleConfig),
    "lorahub": (LoraHubModel, LoraHubConfig),
}


@pytest.fixture
def pool(make_adapter):
    paths = [
        make_adapter("r4", r=4, alpha=8, seed=1),
        make_adapter("v_only", r=2, alpha=4, targets=("v_proj",), seed=2),
    ]
    return load_pool([str(p) for p in paths])


@pytest.fixture(params=sorted(TUNERS))
def tuner_kind(request) -> str:
    return request.param


@pytest.fixture
def tuner_cls(tuner_kind) -> type[PoolTuner]:
    return TUNERS[tuner_kind][0]


# ---------------------------------------------------------------------- injection
def test_injection_wraps_every_pool_matrix_and_unload_gives_back_the_originals(
    tuner_cls, pool, input_ids
):
    model = make_tiny_llama()
    originals = {name: model.get_submodule(name) for name in pool.module_names()}
    base_keys = set(model.state_dict())
    with torch.no_grad():
        base_logits = model(input_ids=input_ids).logits
    tuner = tuner_cls(model, pool)
    assert tuner.matrix_names == pool.module_names()
    layers = tuner.tuner_layers()
    assert list(layers) == tuner.matrix_names
    for name, layer in layers.items():
        assert model.get_submodule(name) is layer
        assert layer.base_layer is originals[name]
    tuner_params = {id(p) for p in tuner.trainable_parameters().values()}
    assert tuner_params
    assert all(id(p) in tuner_params for p in model.parameters() if p.requires_grad)
    assert all(not p.requires_grad for o in originals.values() for p in o.parameters())
    with torch.no_grad():
        assert not torch.allclose(tuner(input_ids=input_ids).logits, base_logits)

    plain = tuner.unload()
    assert plain is model
    for name, original in originals.items():
        assert model.get_submodule(name) is original  # the very same module objects
    assert tuner.tuner_layers() == {}
    assert set(model.state_dict()) == base_keys  # no tuner tensor left behind
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=input_ids).logits, base_logits)


def test_target_modules_select_matrices_or_fail_clearly(tuner_kind, pool):
    tuner_cls, config_cls = TUNERS[tuner_kind]
    tuner = tuner_cls(make_tiny_llama(), pool, config_cls(target_modules=["v_proj"]))
    assert tuner.matrix_names and all(n.endswith("v_proj") for n in tuner.matrix_names)
    with pytest.raises(ConfigError, match="match no matrix adapted by the pool"):
        tuner_cls(make_tiny_llama(), pool, config_cls(target_modules=["o_proj"]))


# ---------------------------------------------------------------------- token masks
def test_token_masks_are_set_during_forward_and_cleared_after(tuner_cls, pool, input_ids):
    tuner = tuner_cls(make_tiny_llama(), pool)
    mask = torch.ones_like(input_ids)
    mask[0, 4:] = 0
    seen: dict[str, torch.Tensor | None] = {}

    def record(name):
        def hook(module, args):
            seen[name] = module.token_mask

        return hook

    handles = [
        layer.register_forward_pre_hook(record(name))
        for name, layer in tuner.tuner_layers().items()
    ]
    with torch.no_grad():
        tuner(input_ids=input_ids, attention_mask=mask)
    assert set(seen) == set(tuner.matrix_names)
    for value in seen.values():
        assert value is not None and value.dtype == torch.bool
        assert torch.equal(value, mask.bool())  # padding is False
    assert all(layer.token_mask is None for layer in tuner.tuner_layers().values())

    seen.clear()
    with torch.no_grad():
        tuner(input_ids=input_ids)  # no attention mask: every token counts
    assert all(value is None for value in seen.values())

    for handle in handles:
        handle.remove()


def test_token_masks_are_cleared_when_the_forward_fails(pool, input_ids):
    tuner = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2))
    first = next(iter(tuner.tuner_layers().values()))

    def boom(module, args):
        raise RuntimeError("boom")

    first.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        tuner(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    assert all(layer.token_mask is None for layer in tuner.tuner_layers().values())


# ---------------------------------------------------------------------- trainable state
def test_trainable_state_names_and_load_errors(pool):
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, output_scale="learnable"))
    state = more.trainable_state_dict()
    expected = {f"{m}.router.weight" for m in more.matrix_names}
    expected |= {f"{m}.output_scale" for m in more.matrix_names}
    assert set(state) == expected
    # The same names as the wrapped model's own parameters (what methods exchange).
    assert {n for n, p in more.model.named_parameters() if p.requires_grad} == expected
    assert more.num_trainable_parameters() == sum(v.numel() for v in state.values())

    name = f"{more.matrix_names[0]}.router.weight"
    with pytest.raises(PoolError, match=r"missing \['model"):
        more.load_trainable_state_dict({k: v for k, v in state.items() if k != name})
    with pytest.raises(PoolError, match=r"unexpected \['extra'\]"):
        more.load_trainable_state_dict({**state, "extra": torch.zeros(1)})
    wrong = dict(state)
    wrong[name] = torch.zeros(1, 32)
    with pytest.raises(PoolError, match="has shape"):
        more.load_trainable_state_dict(wrong)

    changed = {k: v + 1 for k, v in state.items()}
    more.load_trainable_state_dict(changed)
    for key, value in more.trainable_state_dict().items():
        torch.testing.assert_close(value, changed[key])


def test_state_of_an_untrained_parameter_is_still_saved_and_loaded(pool, tmp_path):
    hub = LoraHubModel(make_tiny_llama(), pool)
    hub.lorahub.weights.requires_grad = False  # the "merge" method: nothing trains
    assert hub.num_trainable_parameters() == 0
    assert set(hub.trainable_state_dict()) == {"lorahub.weights"}
    hub.save_pretrained(tmp_path / "hub")
    other = LoraHubModel(make_tiny_llama(), pool, LoraHubConfig(init="zeros"))
    other.load_pretrained_state(tmp_path / "hub")
    torch.testing.assert_close(other.lorahub.weights, hub.lorahub.weights)


# ---------------------------------------------------------------------- save / load
def test_save_load_round_trip_restores_the_state(tuner_cls, pool, tmp_path):
    tuner = tuner_cls(make_tiny_llama(), pool)
    with torch.no_grad():
        for param in tuner.trainable_parameters().values():
            param.add_(torch.randn_like(param))
    tuner.save_pretrained(tmp_path / "saved")
    record = json.loads((tmp_path / "saved" / tuner.config_name).read_text())
    assert record["pool"] == {
        "fingerprint": pool.fingerprint(),
        "modules": [{"name": a.name, "source": a.source} for a in pool.adapters],
    }
    assert record["matrices"] == tuner.matrix_names
    assert record[tuner.config_key] == tuner.config.to_dict()

    reloaded = tuner_cls.from_pretrained(make_tiny_llama(), pool, tmp_path / "saved")
    for key, value in tuner.trainable_state_dict().items():
        torch.testing.assert_close(reloaded.trainable_state_dict()[key], value)


def test_save_load_refuses_a_folder_saved_for_another_pool(tuner_cls, pool, make_adapter, tmp_path):
    tuner_cls(make_tiny_llama(), pool).save_pretrained(tmp_path / "saved")
    other = load_pool([str(make_adapter("other", r=4, alpha=8, seed=9))])
    with pytest.raises(PoolError, match="fingerprint") as info:
        tuner_cls.from_pretrained(make_tiny_llama(), other, tmp_path / "saved")
    message = str(info.value)
    assert "\n" not in message and "[r4, v_only]" in message and "[other]" in message
    with pytest.raises(PoolError, match="fingerprint"):
        tuner_cls(make_tiny_llama(), other).load_pretrained_state(tmp_path / "saved")


def test_load_refuses_a_folder_without_a_record(tuner_cls, pool, tmp_path):
    with pytest.raises(PoolError, match="not a SmartFed"):
        tuner_cls.from_pretrained(make_tiny_llama(), pool, tmp_path)


def test_load_refuses_another_matrix_list(pool, tmp_path):
    MoleModel(make_tiny_llama(), pool).save_pretrained(tmp_path / "saved")
    narrow = MoleModel(make_tiny_llama(), pool, MoleConfig(target_modules=["v_proj"]))
    with pytest.raises(PoolError, match="matrix list differs"):
        narrow.load_pretrained_state(tmp_path / "saved")


def test_load_refuses_another_output_scale_even_with_equal_shapes(pool, tmp_path):
    MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2)).save_pretrained(tmp_path / "k")
    one = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=2, output_scale="one"))
    with pytest.raises(PoolError, match="output_scale='k'"):
        one.load_pretrained_state(tmp_path / "k")


def test_a_more_folder_of_an_older_version_still_loads(pool, tmp_path):
    """Runs saved before the router registry have no 'router' key and still a 'k_min' one."""
    more = MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3))
    more.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "more_config.json"
    record = json.loads(path.read_text())
    del record["more_config"]["router"]
    record["more_config"]["k_min"] = 1
    path.write_text(json.dumps(record))
    reloaded = MoreModel.from_pretrained(make_tiny_llama(), pool, tmp_path / "old")
    assert reloaded.config.router == "linear"
    assert reloaded.get_quotas().tolist() == more.get_quotas().tolist()
    MoreModel(make_tiny_llama(), pool, MoreConfig(top_k=3)).load_pretrained_state(tmp_path / "old")


# ---------------------------------------------------------------------- config base
def test_config_from_dict_names_unknown_and_expected_fields():
    with pytest.raises(ConfigError) as info:
        MoreConfig.from_dict({"top_k": 2, "topk": 3, "zzz": 1}, source="run.json")
    message = str(info.value)
    assert message.startswith("run.json: unknown MoRE config field(s) topk, zzz; expected ")
    assert "router" in message and "target_modules" in message and "top_k" in message
    with pytest.raises(ConfigError, match="unknown MoLE config field"):
        MoleConfig.from_dict({"k_min": 1})  # retired for MoRE only
    assert MoreConfig.from_dict({"top_k": 4, "k_min": 2}) == MoreConfig(top_k=4)


@pytest.mark.parametrize("config_cls", [MoreConfig, MoleConfig, LoraHubConfig])
@pytest.mark.parametrize("bad", [[], "q_proj", [1]])
def test_target_modules_validation_is_shared(config_cls, bad):
    assert issubclass(config_cls, TunerConfig)
    with pytest.raises(ConfigError, match="target_modules"):
        config_cls(target_modules=bad)
    config = config_cls(target_modules=("q_proj",))
    assert config.target_modules == ["q_proj"]
    assert config_cls.from_dict(config.to_dict()) == config


def test_routers_stay_float32_on_a_bfloat16_base(pool, input_ids):
    model = make_tiny_llama().to(torch.bfloat16)
    for tuner in (MoreModel(model, pool, MoreConfig(top_k=2)),):
        for name, param in tuner.trainable_parameters().items():
            assert param.dtype == torch.float32, name
        layer = next(iter(tuner.tuner_layers().values()))
        assert layer.expert_A.dtype == torch.bfloat16
        with torch.no_grad():
            logits = tuner(input_ids=input_ids).logits
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_the_model_is_kept_as_a_module(pool):
    tuner = MoleModel(make_tiny_llama(), pool)
    assert isinstance(tuner, nn.Module)
    assert [name for name, _ in tuner.named_children()] == ["model"]
