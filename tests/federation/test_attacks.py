"""Federation under attack: 5 clients sampled every round, client 0 Byzantine in every round.

Each attack (``attacking.py``: a boosted update, a sign-flipped boosted update, an importance
vector inflated to grab EEQA's quota budget) is run under plain FedAvg and under each defence;
the measure is the final eval loss's improvement over round 0, as a share of the honest run's
(same settings, no attacker, FedAvg). Plain FedAvg loses most of it to the update attacks (the
importance attack takes the quota budget, which costs this tiny model only ~9 % of it);
``--aggregation median``, ``--aggregation trimmed_mean`` and ``--clip_update_norm`` keep at least
90 % (Krum: see ``KEPT_BELOW_TARGET``). The clip norm is the median L2 norm of the honest
clients' updates in the honest run.

The default suite runs one case per defence on FedIT, whose runs are the quickest (the
importance attack has a quick test of its own in ``tests/methods/test_robust_importance.py``);
``-m slow`` runs every method x attack x defence.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from smartfed.federation.runner import run_federated

from .attacking import AttackingClients

pytestmark = pytest.mark.integration  # every test here runs whole federated runs

COMMON = dict(num_clients=5, sample_clients=5, local_steps=3, learning_rate=0.05,
              eval_samples=48, eval_batch_size=16)  # fmt: skip
# SmartFed's routers over the tiny random pool improve the loss ~5x less than FedIT's LoRA:
# larger batches (steadier client updates) and more rounds keep its measure above the noise.
SETUP = {
    "smartfed": dict(COMMON, num_rounds=6, eval_every=6, batch_size=16),
    "fedit": dict(COMMON, num_rounds=4, eval_every=4),
}
KEPT = 0.9  # share of the honest improvement a defence must keep
LOST = 0.5  # plain FedAvg under attack keeps less than this (most of it is lost)
# Where a defence falls short of KEPT, measured, and what it is held to instead. Krum (not in the
# issue's list) keeps one client's update of the five: the attacker is out, but so is the
# averaging of four honest updates, and SmartFed's noisier router updates lose 12 % to that
# (88.2 % kept under every attack, and FedIT 97.1 %, in the measurement).
KEPT_BELOW_TARGET = {
    ("smartfed", attack, "krum"): 0.8 for attack in ("scale", "sign_flip", "inflate_importance")
}
ATTACKS = {
    "smartfed": ("scale", "sign_flip", "inflate_importance"),
    "fedit": ("scale", "sign_flip"),
}
DEFENCES = ("median", "trimmed_mean", "clip_update_norm", "krum")
# (method, attack, defence) run by the default suite; everything else is marked slow.
DEFAULT = {
    ("fedit", "sign_flip", "median"),
    ("fedit", "scale", "trimmed_mean"),
    ("fedit", "sign_flip", "clip_update_norm"),
}
DEFAULT_UNDEFENDED = {("fedit", "scale")}
EXPERTS_PER_MATRIX = 8  # the tiny pool: two rank-4 adapters on every adapted matrix


@pytest.fixture
def arithmetic_task(tmp_path: Path) -> str:
    """100 training sums (20 per client) and 48 held out: enough for a steady eval loss."""
    rng = random.Random(0)
    for split, count in (("train", 100), ("test", 48)):
        with (tmp_path / f"{split}.jsonl").open("w") as handle:
            for _ in range(count):
                a, b = rng.randint(0, 9), rng.randint(0, 9)
                handle.write(json.dumps({"prompt": f"{a}+{b}=", "response": str(a + b)}) + "\n")
    return str(tmp_path / "{split}.jsonl")


@dataclass
class Outcome:
    initial_loss: float
    final_loss: float
    final_quotas: list[int] | None
    honest_update_norms: list[float]  # measured by the client app
    aggregation: str  # as summary.json states it
    update_norms: dict[str, float] | None  # the last round's, as metrics.jsonl records them

    @property
    def improvement(self) -> float:
        return self.initial_loss - self.final_loss


def _run(config_factory, task: str, method: str, attack: str | None, name: str, **settings):
    output_dir = str(Path(task).parent / name)
    config = config_factory(method=method, task=task, output_dir=output_dir, **SETUP[method],
                            **settings)  # fmt: skip
    clients = AttackingClients(attack)
    summary = run_federated(config, client_app=clients.app)
    last = json.loads((Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    return Outcome(
        initial_loss=summary["initial_eval"]["eval_loss"],
        final_loss=last["eval_loss"],
        final_quotas=last.get("quotas"),
        honest_update_norms=clients.honest_update_norms,
        aggregation=summary["aggregation"],
        update_norms=last.get("update_norms"),
    )


# The fixtures build the same seeded model, pool and task in every test, so the honest run of a
# method is the same in all of them: it runs once per session.
_HONEST: dict[str, Outcome] = {}


def _honest(config_factory, task: str, method: str) -> Outcome:
    if method not in _HONEST:
        _HONEST[method] = _run(config_factory, task, method, None, "honest")
        assert _HONEST[method].improvement > 0.02, _HONEST[method]  # something to lose
    return _HONEST[method]


def _defence_settings(defence: str, honest: Outcome) -> dict:
    if defence == "clip_update_norm":
        return {"clip_update_norm": float(np.median(honest.honest_update_norms))}
    return {"aggregation": defence}


def _cases(pairs_only: bool = False):
    for method, attacks in ATTACKS.items():
        for attack in attacks:
            if pairs_only:
                slow = (method, attack) not in DEFAULT_UNDEFENDED
                yield pytest.param(method, attack, marks=[pytest.mark.slow] if slow else [])
                continue
            for defence in DEFENCES:
                slow = (method, attack, defence) not in DEFAULT
                marks = [pytest.mark.slow] if slow else []
                yield pytest.param(method, attack, defence, marks=marks)


@pytest.mark.parametrize(("method", "attack"), list(_cases(pairs_only=True)))
def test_plain_fedavg_loses_most_of_the_improvement(
    tiny_run_config, arithmetic_task, method, attack
):
    honest = _honest(tiny_run_config, arithmetic_task, method)
    attacked = _run(tiny_run_config, arithmetic_task, method, attack, f"{attack}-fedavg")
    kept = attacked.improvement / honest.improvement
    print(f"\n{method} {attack} fedavg: {kept:.1%} kept, quotas {attacked.final_quotas}")  # -s
    if attack == "inflate_importance":
        # The attacker takes the quota budget: its matrix gets every expert, the others k_min
        # or close. What that costs in loss varies with the matrix and the round in this tiny
        # model (measured: 91 % of the improvement kept here, 63 % over 4 rounds of batch 4),
        # so the attack is judged by its target, the quotas.
        assert attacked.final_quotas[0] == EXPERTS_PER_MATRIX, attacked.final_quotas
        assert honest.final_quotas[0] < EXPERTS_PER_MATRIX, honest.final_quotas
    else:
        assert kept < LOST, (kept, attacked, honest)


@pytest.mark.parametrize(("method", "attack", "defence"), list(_cases()))
def test_defence_keeps_the_honest_improvement(
    tiny_run_config, arithmetic_task, method, attack, defence
):
    honest = _honest(tiny_run_config, arithmetic_task, method)
    settings = _defence_settings(defence, honest)
    attacked = _run(tiny_run_config, arithmetic_task, method, attack, f"{attack}-{defence}",
                    **settings)  # fmt: skip
    kept = attacked.improvement / honest.improvement
    print(f"\n{method} {attack} {defence}: {kept:.1%} kept, quotas {attacked.final_quotas}")
    needed = KEPT_BELOW_TARGET.get((method, attack, defence), KEPT)
    if defence == "clip_update_norm":
        assert attacked.aggregation.startswith("fedavg, updates clipped to L2 norm")
        assert len(attacked.update_norms) == 5
        if attack != "inflate_importance":  # the attacker's update, recorded before clipping
            assert max(attacked.update_norms.values()) > 5 * settings["clip_update_norm"]
    else:
        assert attacked.aggregation.startswith(defence)
    assert kept >= needed, (f"{kept:.1%} of the honest improvement kept", attacked, honest)
    if attack == "inflate_importance":
        # Outvoted (median, trimmed mean, Krum) or clipped to a typical honest client's pull on
        # the split (clip_update_norm): the honest quota table.
        assert attacked.final_quotas == honest.final_quotas
