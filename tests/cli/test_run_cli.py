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
        # Settings that were silently ignored before methods owned their settings:
        (["--method", "fedit", "--topk_experts", "4"], "--topk_experts is a setting of smartfed"),
        (["--method", "fedit", "--dense"], "--dense is a setting of smartfed, not of method fedit"),
        (["--method", "fedit", "--mole_top_k", "9"], "--mole_top_k is a setting of mole"),
        (["--method", "mole", "--output_scale", "one"], "not of method mole"),
        (["--method", "merge", "--learning_rate", "1e-3"], "merge's settings: none"),
        (["--dense", "--enable_eeqa"], "--enable_eeqa does not apply with --dense"),
        (["--dense", "--topk_experts", "4"], "--topk_experts does not apply with --dense"),
        (["--dense", "--k_min", "2"], "--k_min only applies with EEQA, which --dense turns off"),
        (["--dense", "--ema_beta", "0.5"], "--ema_beta only applies with EEQA"),
        (["--no-enable_eeqa", "--eeqa_warmup_rounds", "2"], "which --no-enable_eeqa turns off"),
        (["--partition_field", "bucket"], "--partition_field does not apply to --partition iid"),
        (["--dirichlet_alpha", "0.1"], "--dirichlet_alpha does not apply to --partition iid"),
        (["--router", "nope"], "unknown router design 'nope'"),
        (["--method", "mole", "--router", "nope"], "unknown router design 'nope'"),
        (["--ema_beta", "1.0"], "--ema_beta must be < 1"),
        (["--router_init_std", "-1"], "--router_init_std must be >= 0"),
        # DP privatises the routers only; EEQA's quotas would leak the clients' importance.
        (
            ["--dp_noise_multiplier", "1", "--dp_clip_norm", "1", "--topk_experts", "4"],
            "add --no-enable_eeqa (uniform K) or --dense to run SmartFed under DP",
        ),
        (
            ["--dp_noise_multiplier", "1", "--dp_clip_norm", "1", "--no-dense"],
            "EEQA steers each round's quotas by the clients' importance statistics",
        ),
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
    # The default diag_lowrank router, M = 16 experts per matrix: 2M + 2 * M * 4 values each.
    assert summary["trainable_parameters"] == 30 * 2 * (2 * 16 + 2 * 16 * 4)
    assert summary["bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["initial_eval"]["eval_loss"] > 0
    config = json.loads((out_dir / "config.json").read_text())
    assert config["preset"] == "smoke" and config["model_name_or_path"] == "smollm2-135m-instruct"
    assert Path(summary["final_dir"]).name == "final"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--output_scale", "nope"], "invalid choice: 'nope'"),
        (["--importance_score", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_choice_typos_fail_at_parsing(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *argv])
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_toml_method_settings_follow_the_same_rules(capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("method = 'fedit'\ntopk_experts = 4\n")
    code, _, err = _run(capsys, "--config", str(config), "--output_dir", str(tmp_path / "r"))
    assert code == 1 and "--topk_experts is a setting of smartfed, not of method fedit" in err


def test_a_presets_method_settings_yield_to_explicit_ones():
    """The smoke preset's K = 4 must not make `--preset smoke --dense` an error: a preset is not
    the user's input. The same K given explicitly is refused (test above)."""
    from smartfed.assembly.config import gather

    dense = gather(preset="smoke", overrides={"dense": True}).config_for()
    assert dense.settings.dense and dense.settings.topk_experts is None
    fedit = gather(preset="smoke", overrides={"method": "fedit"}).config_for()
    assert fedit.method == "fedit" and not hasattr(fedit.settings, "topk_experts")
    assert gather(preset="smoke").config_for().settings.topk_experts == 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, (True, None, None)),  # the default: every expert, no EEQA
        ({"topk_experts": 8}, (False, 8, True)),  # a K asks for top-K, EEQA on (the paper's)
        ({"enable_eeqa": False}, (False, 32, False)),  # uniform K = 32
        ({"k_min": 2}, (False, 32, True)),  # an EEQA setting asks for EEQA
        ({"dense": False}, (False, 32, True)),
    ],
)
def test_smartfed_is_dense_unless_a_top_k_setting_is_given(overrides, expected):
    from smartfed.assembly.config import gather

    settings = gather(preset="demo", overrides=overrides).config_for().settings
    assert (settings.dense, settings.topk_experts, settings.enable_eeqa) == expected
    assert (settings.router, settings.learning_rate) == ("diag_lowrank", 5e-2)


def test_a_task_without_lora_pool_uses_its_default_pool():
    from smartfed.assembly.config import resolve_config

    assert resolve_config(overrides={"task": "math_code"}).pool_items == ["en_math", "en_code"]
    assert resolve_config(overrides={"task": "cn_math"}).pool_items == ["cn_chat", "en_math"]


LEGACY = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("entry", ["smartfed", "smartfed_dense", "smartfed_uniform", "lorahub",
                                   "mole", "fedit", "merge", "fedsa_lora"])  # fmt: skip
def test_configs_written_by_version_0_1_still_load(entry):
    """Run directories of SmartFed 0.1 (one flat dict of 42 settings) convert on reading: the
    method keeps the settings it read then and drops the ones it ignored."""
    from smartfed.assembly.config import config_from_dict

    path = LEGACY / "cn_math" / entry / "config.json"
    saved = json.loads(path.read_text())
    assert "method_settings" not in saved  # really the old format
    config = config_from_dict(saved, source=str(path))
    assert config.method == saved["method"] and config.num_rounds == saved["num_rounds"]
    if saved["method"] == "lorahub":
        assert config.settings.learning_rate == saved["lorahub_learning_rate"]
    elif saved["method"] != "merge":
        assert config.settings.learning_rate == saved["learning_rate"]
    if saved["method"] == "smartfed" and saved["dense"]:
        assert config.settings.dense and config.settings.topk_experts is None


def test_resuming_a_version_0_1_run_is_refused_in_one_line(capsys, tmp_path):
    old = json.loads((LEGACY / "cn_math" / "smartfed" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(old))
    code, _, err = _run(capsys, "--resume", str(tmp_path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "cannot be continued" in lines[0]


def test_toml_per_method_tables_apply_to_their_method_only(tmp_path):
    """[methods.NAME] gives each method its own values (one bench, each method at its own
    learning rate); they win over the file's top level, and flags win over them."""
    from smartfed.assembly.config import gather

    config = tmp_path / "bench.toml"
    config.write_text(
        "learning_rate = 1e-3\n[methods.smartfed]\nlearning_rate = 5e-2\nrouter = 'linear'\n"
        "[methods.fedit]\nlearning_rate = 2e-3\n"
    )
    values = gather(config_file=config)
    assert values.config_for("smartfed").settings.learning_rate == 5e-2
    assert values.config_for("fedit").settings.learning_rate == 2e-3
    assert values.config_for("mole", strict=False).settings.learning_rate == 1e-3  # top level
    uniform = values.config_for("smartfed", {"enable_eeqa": False}, strict=False)
    assert (uniform.settings.learning_rate, uniform.settings.router) == (5e-2, "linear")
    flagged = gather(config_file=config, overrides={"learning_rate": 7e-3})
    assert flagged.config_for("smartfed").settings.learning_rate == 7e-3


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("[methods.nope]\nlearning_rate = 1e-3\n", "unknown method 'nope'"),
        ("[methods.fedit]\ntopk_experts = 4\n", "[methods.fedit] topk_experts is not a setting"),
        ("[methods.fedit]\nlearning_rate = 'fast'\n", "[methods.fedit]"),
        ("methods = 3\n", "'methods' must be a table"),
    ],
)
def test_toml_per_method_tables_refuse_bad_values(table, fragment, capsys, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(table)
    code, _, err = _run(capsys, "--config", str(config), "--output_dir", str(tmp_path / "r"))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and fragment in lines[0], err
