"""``smartfed run``: bad flags fail in one line before any work; the smoke preset runs for real."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from smartfed.cli.main import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--lora_pool", "no_such_module", "--task", "gsm8k"], "unknown pool module"),
        (["--num_clients", "2", "--sample_clients", "3"], "--sample_clients (3) must not exceed"),
        (["--topk_experts", "0"], "--topk_experts must be >= 1"),
        (["--preset", "smoke", "--data_dir", "/no/such/dir"], "/no/such/dir"),
        (["--task", "cn_code"], "DoIT"),
        (["--config", "/no/such.toml"], "config file not found"),
    ],
)
def test_bad_settings_fail_in_one_line_before_work(capsys, tmp_path, argv, fragment):
    started = time.perf_counter()
    code, _, err = _run(capsys, *argv, "--output_dir", str(tmp_path / "run"))
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("smartfed: error: "), err
    assert fragment in lines[0]
    assert time.perf_counter() - started < 20  # no model was loaded, no round was run
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_toml_config_with_unknown_key(capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("num_rounds = 2\nnum_round = 3\n")
    code, _, err = _run(capsys, "--config", str(config))
    assert code == 1 and "unknown setting 'num_round'" in err and str(config) in err


@pytest.mark.parametrize(
    "setting",
    [["--num_rounds", "3"], ["--no-enable_eeqa"], ["--no-dense"], ["--eval_samples", "0"]],
)
def test_resume_refuses_other_settings(setting, capsys, tmp_path):
    """Also false-y ones: a dropped --no-enable_eeqa would silently run another experiment."""
    code, _, err = _run(capsys, "--resume", str(tmp_path), *setting)
    assert code == 1 and "do not combine" in err


@pytest.mark.integration
def test_smoke_preset_on_the_default_model(capsys, tmp_path):
    out_dir = tmp_path / "smoke"
    code, out, err = _run(capsys, "--preset", "smoke", "--output_dir", str(out_dir))
    assert code == 0, err
    assert "round 2/2" in out
    for name in ("config.json", "partitions.json", "metrics.jsonl", "summary.json"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "final" / "routers.safetensors").is_file()
    assert (out_dir / "final" / "more_config.json").is_file()
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == [
        "round_0001",
        "round_0002",
    ]
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "bytes_down", "bytes_up", "wall_s", "quotas", "importance",
                    "energy_kwh", "eval_loss"):  # fmt: skip
            assert row[key] is not None, key
        assert len(row["quotas"]) == 60  # 30 layers × (q_proj, v_proj)
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["pool"] == ["smoke_math_a", "smoke_math_b"]
    assert summary["trainable_parameters"] == 30 * (16 * 576 + 16 * 576)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["initial_eval"]["eval_loss"] > 0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["preset"] == "smoke" and config["model_name_or_path"] == "smollm2-135m-instruct"
    assert Path(summary["final_dir"]).name == "final"
