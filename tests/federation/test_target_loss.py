"""The target loss: scored every round beside the in-distribution loss, recorded everywhere a
run's numbers go, and refused clearly where it cannot apply."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from smartfed.assembly.runtime import get_runtime
from smartfed.engine.evaluation import evaluate_loss
from smartfed.errors import ConfigError
from smartfed.federation.runner import run_federated


@pytest.fixture
def target_pattern(tmp_path: Path) -> str:
    """A target set unlike the tiny task's training data: three-term sums."""
    rng = random.Random(1)
    for split, count in (("dev", 6), ("test", 10)):
        with (tmp_path / f"{split}.jsonl").open("w") as handle:
            for _ in range(count):
                a, b, c = (rng.randint(0, 9) for _ in range(3))
                handle.write(json.dumps({"prompt": f"{a}+{b}+{c}=", "response": str(a + b + c)}))
                handle.write("\n")
    return str(tmp_path / "{split}.jsonl")


def test_target_loss_every_round_and_in_the_summary(tiny_run_config, target_pattern):
    config = tiny_run_config(target_data=target_pattern, eval_every=3)
    assert config.target_samples == 64  # on by default once there is a target set
    summary = run_federated(config)
    run = Path(config.output_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The target every round; the in-distribution loss only on eval rounds (the last).
    assert all("target_loss" in row and row["target_truncated"] == 0 for row in rows)
    assert ["eval_loss" in row for row in rows] == [False, False, True]
    assert summary["initial_eval"]["target_loss"] > 0
    assert summary["final_target"] == {
        "round": 3,
        "target_loss": rows[-1]["target_loss"],
        "target_ppl": rows[-1]["target_ppl"],
    }
    assert summary["target"]["data"] == target_pattern and summary["target"]["split"] == "test"
    assert rows[-1]["target_loss"] != summary["initial_eval"]["target_loss"]

    # The recorded figure is the loss of the final model on the test file's items.
    runtime = get_runtime(config)
    assert (
        runtime.target_examples[0].prompt
        == json.loads(Path(target_pattern.replace("{split}", "test")).read_text().splitlines()[0])[
            "prompt"
        ]
    )
    final = evaluate_loss(runtime.method.model, runtime.target_batches, prefix="target")
    assert final["target_loss"] == pytest.approx(rows[-1]["target_loss"], abs=1e-6)


def test_target_every_scores_round_zero_every_nth_and_the_last(tiny_run_config, target_pattern):
    config = tiny_run_config(target_data=target_pattern, num_rounds=5, target_every=2)
    summary = run_federated(config)
    rows = [
        json.loads(line)
        for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    assert ["target_loss" in row for row in rows] == [False, True, False, True, True]
    assert "target_loss" in summary["initial_eval"]
    assert summary["final_target"]["round"] == 5


def test_target_split_dev_reads_the_dev_file(tiny_run_config, target_pattern):
    config = tiny_run_config(target_data=target_pattern, target_split="dev", num_rounds=1)
    run_federated(config)
    assert len(get_runtime(config).target_examples) == 6


def test_target_samples_zero_turns_it_off(tiny_run_config, target_pattern):
    config = tiny_run_config(target_data=target_pattern, target_samples=0, num_rounds=1)
    summary = run_federated(config)
    assert summary["final_target"] is None and summary["target"] is None
    assert "target_loss" not in summary["initial_eval"]


def test_target_samples_without_a_target_set_is_refused(tiny_run_config):
    with pytest.raises(ConfigError, match="has no target set"):
        tiny_run_config(target_samples=8)
    assert tiny_run_config().target_samples == 0  # the tiny JSONL task has none


def test_target_data_needs_a_split_pattern(tiny_run_config, tmp_path):
    with pytest.raises(ConfigError, match=r"expected a pattern with \{split\}"):
        tiny_run_config(target_data=str(tmp_path / "dev.jsonl"))


def test_missing_or_malformed_target_file_is_one_line(tiny_run_config, tmp_path, capsys):
    from smartfed.cli.run_command import check_inputs

    pattern = str(tmp_path / "t" / "{split}.jsonl")
    with pytest.raises(ConfigError, match="not found") as missing:
        check_inputs(tiny_run_config(target_data=pattern))
    assert "\n" not in str(missing.value) and "test.jsonl" in str(missing.value)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "test.jsonl").write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ConfigError, match="response") as malformed:
        check_inputs(tiny_run_config(target_data=pattern))
    assert "\n" not in str(malformed.value) and "test.jsonl" in str(malformed.value)


def test_a_method_without_a_global_model_says_why_it_has_no_target_loss(
    tiny_run_config, target_pattern
):
    config = tiny_run_config(method="fedsa_lora", target_data=target_pattern, num_rounds=1)
    summary = run_federated(config)
    assert summary["target"] == {"skipped": "fedsa_lora keeps a model per client: no target loss"}
    assert summary["final_target"] is None
    rows = Path(config.output_dir, "metrics.jsonl").read_text()
    assert "target_loss" not in rows


def test_target_items_get_their_own_length(tiny_run_config, tmp_path):
    """Training cuts at --max_seq_len; the target is scored at --target_max_seq_len, so that
    no answer is cut, and every result counts the ones that were."""
    for split in ("dev", "test"):
        row = {"prompt": "1+1=", "response": "2" * 30}
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    pattern = str(tmp_path / "{split}.jsonl")
    cut = tiny_run_config(target_data=pattern, max_seq_len=24, target_max_seq_len=24)
    whole = tiny_run_config(target_data=pattern, max_seq_len=24, target_max_seq_len=64)
    assert get_runtime(cut).target_encoding["truncated"] == 1
    assert get_runtime(whole).target_encoding["truncated"] == 0
