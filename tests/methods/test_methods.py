"""Every registered method on the tiny model: what trains, what is frozen, what travels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smartfed.assembly.runtime import Runtime
from smartfed.engine.training import client_seed, train_local
from smartfed.errors import ConfigError
from smartfed.federation.runner import run_federated
from smartfed.methods import get_method, method_names

# Substrings of the parameter names each method must send (and nothing else).
PAYLOAD = {
    "fedit": {"lora_A", "lora_B"},
    "ffa_lora": {"lora_B"},
    "fedsa_lora": {"lora_A"},
    "lorahub": {"lorahub.weights"},
    "mole": {"router"},
    "smartfed": {"router"},
    "merge": set(),
    "fed_sb": {"mix"},
    "pool_bridge": {"bridge"},
}
# Settings a method needs on the tiny model (Fed-SB's default rank exceeds its 16-wide v_proj).
TINY_SETTINGS = {"fed_sb": {"lora_rank": 4, "init_examples": 8}}


def _kind(name: str) -> str:
    if name.endswith(".mix.weight"):  # Fed-SB's R sits inside PEFT's lora_A slot
        return "mix"
    if name.endswith((".bridge_U", ".bridge_V")):
        return "bridge"
    for kind in ("lora_A", "lora_B", "lorahub.weights", "router"):
        if kind in name:
            return kind
    raise AssertionError(f"unexpected exchanged tensor {name}")


def test_every_registered_method_is_covered():
    assert set(method_names()) == set(PAYLOAD)


def _all_tensors(method) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the method's model (base weights, pool experts, ...)."""
    module = method.model
    tensors = {f"p:{n}": p.detach().clone() for n, p in module.named_parameters()}
    tensors.update({f"b:{n}": b.detach().clone() for n, b in module.named_buffers()})
    return tensors


@pytest.mark.parametrize("name", sorted(PAYLOAD))
def test_method_trains_only_its_parameters_and_sends_its_payload(name, tiny_run_config):
    runtime = Runtime(tiny_run_config(method=name, **TINY_SETTINGS.get(name, {})))
    method = runtime.method
    assert method.name == name and get_method(name) is type(method)
    sent = method.global_state()
    assert {_kind(k) for k in sent} == PAYLOAD[name]
    if not method.trains:
        assert method.num_trainable_parameters() == 0 and not sent
        return

    before = _all_tensors(method)
    trainable = {f"p:{n}" for n in method.trainable_parameters()}
    # The wrapper's parameter names may carry a prefix; match by suffix.
    trained_keys = {k for k in before if any(k.endswith(t[2:]) for t in trainable)}
    assert trained_keys, "a training method must train something"
    update = train_local(
        method,
        (runtime.client_batches(0, 1).next_batch() for _ in range(3)),
        global_state=runtime.initial_global_state,
        local_state=runtime.initial_local_state,
        round_config=method.server_logic(runtime.config).round_config(),
        local_steps=3,
        learning_rate=5e-2,
        num_examples=10,
        seed=client_seed(0, 1, 0),
    )
    after = _all_tensors(method)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert changed <= trained_keys, f"frozen tensors changed: {sorted(changed - trained_keys)[:3]}"
    # The update carries exactly the communicated part, and it is what training produced.
    assert set(update.global_state) == set(sent)
    assert any(not torch.equal(update.global_state[k], sent[k]) for k in sent)
    assert {_kind(k) for k in update.local_state} == ({"lora_B"} if name == "fedsa_lora" else set())


def test_ffa_lora_keeps_a_at_the_seeded_init_everywhere(tiny_run_config):
    """A is frozen and never sent, so every process must rebuild the very same A."""
    first = Runtime(tiny_run_config(method="ffa_lora")).method
    second = Runtime(tiny_run_config(method="ffa_lora")).method
    a_first = {n: p for n, p in first.model.named_parameters() if "lora_A" in n}
    a_second = dict(second.model.named_parameters())
    assert a_first and all(not p.requires_grad for p in a_first.values())
    for name, tensor in a_first.items():
        torch.testing.assert_close(tensor, a_second[name], rtol=0, atol=0)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize("name", ["fedit", "ffa_lora", "fedsa_lora", "lorahub", "mole"])
def test_method_runs_federated_with_its_payload_size(name, tiny_run_config):
    config = tiny_run_config(method=name, num_rounds=2, **TINY_SETTINGS.get(name, {}))
    summary = run_federated(config)
    run = Path(config.output_dir)
    rows = _rows(run)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["eval_loss"] > 0 for r in rows)
    assert summary["method"] == name
    # Bytes up per round: 2 clients × the communicated float32 tensors (+ small metadata).
    payload = summary["communicated_parameters"] * 4 * 2
    assert payload <= rows[0]["bytes_up"] < payload + 20_000
    if name == "fedsa_lora":
        assert summary["final_dir"] is None and not (run / "final").exists()
    else:
        assert (run / "final").is_dir()


@pytest.mark.integration  # a whole run end to end
def test_ffa_lora_sends_b_and_fedsa_lora_sends_a(tiny_run_config, tmp_path):
    def run(method: str) -> dict:
        out = str(tmp_path / method)
        return run_federated(tiny_run_config(method=method, num_rounds=1, output_dir=out))

    fedit, ffa, fedsa = run("fedit"), run("ffa_lora"), run("fedsa_lora")
    lora = Runtime(tiny_run_config(method="fedit")).method.trainable_parameters()
    a_numel = sum(p.numel() for n, p in lora.items() if "lora_A" in n)
    b_numel = sum(p.numel() for n, p in lora.items() if "lora_B" in n)
    assert fedit["communicated_parameters"] == a_numel + b_numel
    assert ffa["communicated_parameters"] == ffa["trainable_parameters"] == b_numel
    assert fedsa["communicated_parameters"] == a_numel
    assert fedsa["trainable_parameters"] == a_numel + b_numel
    assert ffa["bytes_up"] < fedit["bytes_up"] and fedsa["bytes_up"] < fedit["bytes_up"]


@pytest.mark.integration  # a whole run end to end
def test_fedsa_lora_clients_keep_their_own_b(tiny_run_config):
    from smartfed.federation import client_app
    from smartfed.federation.inprocess import InProcessGrid
    from smartfed.federation.server_app import run_server
    from smartfed.federation.settings import to_run_config

    config = tiny_run_config(method="fedsa_lora", num_clients=2, sample_clients=2, num_rounds=2)
    grid = InProcessGrid(client_app.app, config.num_clients, to_run_config(config))
    run_server(grid, config)
    kept = [
        ctx.state[client_app.LOCAL_STATE_KEY].to_torch_state_dict()
        for ctx in grid.contexts.values()
    ]
    assert all(kept) and all(all("lora_B" in k for k in state) for state in kept)
    # Each client's B is its own: trained on its own data, never averaged.
    first = next(iter(kept[0]))
    assert not torch.equal(kept[0][first], kept[1][first])
    assert kept[0][first].abs().sum() > 0


def test_merge_has_no_rounds_and_no_traffic(tiny_run_config):
    config = tiny_run_config(method="merge")
    summary = run_federated(config)
    run = Path(config.output_dir)
    assert not (run / "metrics.jsonl").read_text().strip()
    assert summary["rounds"] == 0 and summary["bytes_up"] == 0 and summary["bytes_down"] == 0
    assert summary["final_eval"]["eval_loss"] == summary["initial_eval"]["eval_loss"]
    assert summary["final_state"]["module_weights"] == {"pa": 0.5, "pb": 0.5}


@pytest.mark.integration  # a whole run end to end
def test_smartfed_ablations(tiny_run_config, tmp_path):
    dense = run_federated(
        tiny_run_config(dense=True, num_rounds=2, output_dir=str(tmp_path / "dense"))
    )
    rows = _rows(tmp_path / "dense")
    assert all(r["quotas"] == [8] * 4 for r in rows)  # K = M = 4 + 4 experts, EEQA off
    assert dense["final_state"]["quotas"] == [8] * 4
    for scale in ("one", "learnable"):
        summary = run_federated(
            tiny_run_config(output_scale=scale, num_rounds=1, output_dir=str(tmp_path / scale))
        )
        assert summary["final_eval"]["eval_loss"] > 0


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize("name", ["fedit", "ffa_lora", "lorahub", "mole", "smartfed", "merge"])
def test_eval_reloads_the_final_model_of_every_method(name, tiny_run_config):
    """`smartfed eval --run DIR` rebuilds the trained model: same logits as the run's own."""
    from smartfed.assembly.runtime import get_runtime
    from smartfed.evaluation.harness import load_eval_target

    config = tiny_run_config(method=name, num_rounds=1, **TINY_SETTINGS.get(name, {}))
    run_federated(config)
    trained = get_runtime(config).method.model  # the run's model, final state loaded
    batch = get_runtime(config).eval_batches[0]
    target = load_eval_target(run_dir=config.output_dir)
    assert target.description["method"] == name
    with torch.no_grad():
        expected = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = target.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.integration  # a whole run end to end
def test_eval_of_a_fedsa_run_says_there_is_no_global_model(tiny_run_config):
    from smartfed.errors import ConfigError
    from smartfed.evaluation.harness import load_eval_target

    config = tiny_run_config(method="fedsa_lora", num_rounds=1)
    run_federated(config)
    with pytest.raises(ConfigError, match="no global model"):
        load_eval_target(run_dir=config.output_dir)


@pytest.mark.integration  # a whole run end to end
def test_lorahub_trains_at_its_learning_rate_setting(tiny_run_config, tmp_path):
    """LoRAHub's rate is its own `learning_rate` setting (default 5e-2, not the routers')."""
    from smartfed.methods.pool_mixing import LoraHubSettings

    assert LoraHubSettings().learning_rate == 5e-2

    def weights(**overrides) -> dict:
        out = str(tmp_path / "_".join(f"{k}{v}" for k, v in overrides.items()))
        config = tiny_run_config(method="lorahub", num_rounds=1, output_dir=out, **overrides)
        return run_federated(config)["final_state"]["module_weights"]

    slow = weights(learning_rate=1e-4)
    fast = weights(learning_rate=1e-1)
    moved = lambda w: max(abs(v - 0.5) for v in w.values())  # noqa: E731  (start: 1/N = 0.5)
    assert moved(fast) > 10 * moved(slow) > 0
    with pytest.raises(ConfigError, match="unknown setting 'lorahub_learning_rate'"):
        tiny_run_config(method="lorahub", lorahub_learning_rate=1e-1)


@pytest.mark.integration  # a whole run end to end
def test_server_settings_follow_the_run_not_the_cached_model(tiny_run_config, tmp_path):
    """One process, two runs sharing a runtime (a bench): the second's EEQA switch holds."""
    eeqa = tiny_run_config(num_rounds=3, output_dir=str(tmp_path / "eeqa"))
    uniform = tiny_run_config(num_rounds=3, enable_eeqa=False, output_dir=str(tmp_path / "uni"))
    run_federated(eeqa)
    run_federated(uniform)
    assert {json.dumps(r["quotas"]) for r in _rows(tmp_path / "uni")} == {json.dumps([3] * 4)}
    assert any(r["quotas"] != [3] * 4 for r in _rows(tmp_path / "eeqa"))


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize("overrides", [{"method": "mole"}, {"method": "smartfed", "dense": True}])
def test_routing_usage_is_gate_mass_not_selection_counts(overrides, tiny_run_config):
    """MoLE with top_k = N and dense SmartFed select everything on every token; the usage chart
    must still show what the routers learned, not a constant split."""
    config = tiny_run_config(num_rounds=1, **overrides)
    run_federated(config)
    usage = json.loads((Path(config.output_dir) / "usage.json").read_text())["matrices"]
    for shares in usage.values():
        assert set(shares) == {"pa", "pb"}
        assert sum(shares.values()) == pytest.approx(1.0)
    assert any(abs(shares["pa"] - 0.5) > 1e-4 for shares in usage.values())


@pytest.mark.integration  # a whole run end to end
def test_fedsa_lora_evaluates_averaged_a_with_each_clients_own_b(tiny_run_config):
    """The paper's personalised protocol, through Flower's evaluate round, on eval rounds only."""
    from smartfed.assembly.runtime import get_runtime
    from smartfed.engine.evaluation import evaluate_loss, loss_metrics
    from smartfed.federation import client_app
    from smartfed.federation.inprocess import InProcessGrid
    from smartfed.federation.server_app import run_server
    from smartfed.federation.settings import to_run_config

    config = tiny_run_config(
        method="fedsa_lora", num_clients=2, sample_clients=2, num_rounds=3, eval_every=2
    )
    grid = InProcessGrid(client_app.app, config.num_clients, to_run_config(config))
    run_server(grid, config)
    rows = _rows(Path(config.output_dir))
    assert ["eval_loss" in r for r in rows] == [False, True, True]
    assert [r.get("bytes_eval", 0) > 0 for r in rows] == [False, True, True]

    method = get_runtime(config).method
    averaged_a = method.global_state()  # the server loaded the final global state
    loss_sum, tokens = 0.0, 0
    for context in grid.contexts.values():
        method.load_global_state(averaged_a)
        method.load_local_state(context.state[client_app.LOCAL_STATE_KEY].to_torch_state_dict())
        result = evaluate_loss(method.model, get_runtime(config).eval_batches)
        loss_sum, tokens = loss_sum + result["eval_loss_sum"], tokens + result["eval_tokens"]
    assert rows[-1]["eval_loss"] == pytest.approx(loss_metrics(loss_sum, tokens)["eval_loss"])


def test_fresh_lora_adapts_every_matrix_the_pool_adapts(tiny_run_config, make_adapter):
    from smartfed.methods.fresh_lora import fresh_lora_config
    from smartfed.pool import load_pool

    first = make_adapter("qv", targets=("q_proj", "v_proj"), use_rslora=True)
    second = make_adapter("kv", targets=("k_proj", "v_proj"))
    config = tiny_run_config(method="fedit", lora_pool=f"{first},{second}")
    lora = fresh_lora_config(load_pool(config.pool_items), config.settings)
    assert sorted(lora.target_modules) == ["k_proj", "q_proj", "v_proj"]
    assert lora.use_rslora  # the first module's scaling convention


@pytest.mark.integration  # a whole run end to end
def test_a_partial_saved_adapter_is_refused(tiny_run_config, tmp_path):
    from safetensors.torch import load_file, save_file

    from smartfed.errors import ConfigError

    config = tiny_run_config(method="fedit", num_rounds=1)
    run_federated(config)
    final = Path(config.output_dir) / "final"
    weights = load_file(final / "adapter_model.safetensors")
    dropped = next(k for k in weights if "lora_B" in k)
    kept = {k: v for k, v in weights.items() if k != dropped}
    save_file(kept, final / "adapter_model.safetensors")
    method = Runtime(config).method
    with pytest.raises(ConfigError, match="missing"):
        method.load_final(final)


def test_k_min_above_a_matrix_capacity_fails_before_any_round(tiny_run_config, make_adapter):
    from smartfed.errors import ConfigError

    # q_proj has 4 + 4 + 4 experts, v_proj 4 + 4: K = 10 fits q_proj, k_min = 9 not v_proj.
    q_only = make_adapter("q_only", r=4, targets=("q_proj",))
    pool = f"{tiny_run_config().lora_pool},{q_only}"
    config = tiny_run_config(lora_pool=pool, topk_experts=10, k_min=9)
    with pytest.raises(ConfigError, match="--k_min \\(9\\) exceeds the smallest"):
        run_federated(config)
    # No round ran: refused before the run directory was written.
    assert not (Path(config.output_dir) / "metrics.jsonl").exists()


def test_negative_importance_is_a_dropped_reply_not_a_crashed_round(tiny_run_config):
    logic = Runtime(tiny_run_config()).method.server_logic(tiny_run_config())
    assert logic.check_reply({"importance": [0.1, 0.2, 0.3, 0.4]}) is None
    assert "negative" in logic.check_reply({"importance": [0.1, -1e-9, 0.3, 0.4]})


@pytest.mark.integration  # a whole run end to end
@pytest.mark.parametrize("name", ["smartfed", "lorahub", "fedit"])
def test_a_run_directory_of_version_0_1_still_evaluates(name, tiny_run_config):
    """`smartfed eval --run` on a run written before per-method settings: its config.json is
    one flat dict (LoRAHub's rate as lorahub_learning_rate, every method's fields present)."""
    from smartfed.evaluation.harness import load_eval_target

    config = tiny_run_config(method=name, num_rounds=1, **TINY_SETTINGS.get(name, {}))
    run_federated(config)
    path = Path(config.output_dir) / "config.json"
    saved = json.loads(path.read_text())
    flat = {k: v for k, v in saved.items() if k not in ("method_settings", "config_format")}
    legacy_defaults = {
        "learning_rate": 5e-4, "topk_experts": 32, "enable_eeqa": True, "eeqa_warmup_rounds": 1,
        "k_min": 1, "ema_beta": 0.7, "output_scale": "k", "importance_score": "cosine",
        "router_init_std": 0.02, "dense": False, "lora_rank": None, "lora_alpha": None,
        "lora_targets": None, "mole_top_k": 2, "lorahub_learning_rate": 5e-2,
        "dirichlet_alpha": 0.5,
    }  # fmt: skip
    flat.update(legacy_defaults)
    block = saved["method_settings"]
    flat.update({k: v for k, v in block.items() if k != "learning_rate"})
    flat["lorahub_learning_rate" if name == "lorahub" else "learning_rate"] = block["learning_rate"]
    path.write_text(json.dumps({**flat, "smartfed_version": "0.1.0"}))
    target = load_eval_target(run_dir=config.output_dir)
    batch = get_runtime_batch(config)
    trained = Runtime(config).method
    trained.load_final(Path(config.output_dir) / "final")
    with torch.no_grad():
        expected = trained.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        got = target.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)


def get_runtime_batch(config) -> dict:
    from smartfed.assembly.runtime import get_runtime

    return get_runtime(config).eval_batches[0]
