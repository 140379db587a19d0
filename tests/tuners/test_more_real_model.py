"""MoRE on the real default model (SmolLM2-135M): equivalence with PEFT and a training step."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from smartfed.models import DEFAULT_MODEL, load_base_model
from smartfed.pool import load_pool
from smartfed.tuners.more import MoreConfig, MoreModel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("real_adapters")
    paths = []
    for i, (rank, targets) in enumerate([(4, ["q_proj", "v_proj"]), (2, ["v_proj"])]):
        torch.manual_seed(i)
        config = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False
        )
        peft_model = get_peft_model(load_base_model(DEFAULT_MODEL).model, config)
        peft_model.save_pretrained(out / f"m{i}")
        paths.append(out / f"m{i}")
    return paths


def test_dense_uniform_more_equals_peft_on_the_real_model(real_pool):
    loaded = load_base_model(DEFAULT_MODEL)
    ids = loaded.tokenizer("Rank-wise experts of LoRA modules", return_tensors="pt").input_ids
    peft_model = PeftModel.from_pretrained(loaded.model, str(real_pool[0]), adapter_name="a")
    peft_model.load_adapter(str(real_pool[1]), adapter_name="b")
    peft_model.base_model.set_adapter(["a", "b"])
    more = MoreModel(
        load_base_model(DEFAULT_MODEL).model,
        load_pool([str(p) for p in real_pool]),
        MoreConfig(top_k=10_000, router_init_std=0.0),
    )
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = more(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_router_training_step_on_the_real_model(real_pool):
    loaded = load_base_model(DEFAULT_MODEL)
    more = MoreModel(loaded.model, load_pool([str(p) for p in real_pool]), MoreConfig(top_k=2))
    batch = loaded.tokenizer(["1 + 1 = 2", "2 + 2 = 4"], return_tensors="pt", padding=True)
    optimizer = torch.optim.AdamW([p for p in more.parameters() if p.requires_grad], lr=1e-2)
    before = more.router_state_dict()
    more.train()
    more.track_importance(True)
    loss = more(**batch, labels=batch.input_ids).loss
    loss.backward()
    optimizer.step()
    after = more.router_state_dict()
    assert torch.isfinite(loss)
    assert len(after) == 60  # 30 layers × (q_proj, v_proj)
    assert all(not torch.equal(before[k], after[k]) for k in after)
    stats = more.read_importance()
    assert stats.tokens == int(batch.attention_mask.sum())
    assert (stats.matrix > 0).all()
