"""``smartfed bench --preset smoke`` runs every method and writes the table and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartfed.bench.variants import default_methods
from smartfed.cli.main import main


def _tiny_flags(config) -> list[str]:
    return [
        "--model_name_or_path", config.model_name_or_path,
        "--lora_pool", config.lora_pool,
        "--task", config.task,
        "--max_seq_len", "64",
        "--eval_samples", "8",
    ]  # fmt: skip


@pytest.mark.integration  # a whole run end to end
def test_smoke_bench_runs_every_method_with_table_and_plots(tiny_run_config, tmp_path, capsys):
    config = tiny_run_config()
    out = tmp_path / "bench"
    # The paper's router: on these 4 tiny matrices its importance moves EEQA's quotas (the
    # default diag_lowrank's cosine scores are too alike to move them), which the quota plot needs.
    argv = ["bench", "--preset", "smoke", *_tiny_flags(config), "--router", "linear",
            "--output_dir", str(out)]  # fmt: skip
    assert main([*argv, "--data_fraction", "0.5"]) == 0, capsys.readouterr().err

    results = json.loads((out / "results.json").read_text())
    assert results["task"] == config.task and results["command"]
    labels = [*default_methods(), "smartfed_data50"]
    assert list(results["methods"]) == labels
    keys = {
        "final_eval_loss", "metric", "bytes_up", "bytes_down", "comm_ratio_vs_fedit",
        "rounds_to_fedit_loss", "step_time_s", "energy_kwh", "trainable_params",
    }  # fmt: skip
    for label, result in results["methods"].items():
        assert keys <= set(result), label
        assert result["final_eval_loss"] > 0, label
    methods = results["methods"]
    assert methods["merge"]["bytes_up"] == 0 and methods["merge"]["trainable_params"] == 0
    assert methods["ffa_lora"]["bytes_up"] < methods["fedit"]["bytes_up"]
    assert methods["smartfed"]["comm_ratio_vs_fedit"] > 0

    # Each ablation ran with its own setting, not the cached settings of the entry before it.
    def quotas(label: str) -> set[str]:
        rows = (out / label / "metrics.jsonl").read_text().splitlines()
        return {json.dumps(json.loads(row)["quotas"]) for row in rows}

    assert quotas("smartfed_uniform") == {json.dumps([4] * 4)}  # smoke K = 4, EEQA off
    assert quotas("smartfed_dense") == {json.dumps([8] * 4)}  # K = M = 4 + 4 experts
    # Every entry shares the task, data split and seed; only the method settings differ.
    partitions = {
        label: json.loads((out / label / "partitions.json").read_text())
        for label in default_methods()
    }
    assert len({json.dumps(p) for p in partitions.values()}) == 1
    sizes = [
        c["size"]
        for c in json.loads((out / "smartfed_data50" / "partitions.json").read_text())["clients"]
    ]
    assert sum(sizes) == sum(c["size"] for c in partitions["fedit"]["clients"]) // 2

    table = (out / "results.md").read_text()
    assert all(f"| {label} |" in table for label in labels)
    page = (out / "report.md").read_text()
    for png in ("loss_vs_round.png", "loss_vs_bytes.png", "quotas_smartfed.png",
                "usage_smartfed.png", "usage_mole.png", "partitions.png"):  # fmt: skip
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in page

    # A rerun resumes: finished methods are skipped, nothing is retrained.
    capsys.readouterr()
    assert main([*argv, "--data_fraction", "0.5"]) == 0
    assert capsys.readouterr().out.count("done, skipped") == len(labels)
    # Other shared settings in the same folder are refused in one line.
    assert main([*argv, "--seed", "3"]) == 1
    assert "other settings (seed" in capsys.readouterr().err


@pytest.mark.integration  # a whole run end to end
def test_report_of_a_single_run(tiny_run_config, tmp_path, capsys):
    from smartfed.federation.runner import run_federated

    config = tiny_run_config(num_rounds=2)
    run_federated(config)
    assert main(["report", config.output_dir]) == 0
    run = Path(config.output_dir)
    assert (run / "report.md").is_file()
    assert (run / "quotas_run.png").is_file() and (run / "usage_run.png").is_file()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--methods", "fedit,nope"], "unknown method 'nope'"),
        (["--methods", "fedit,fedit"], "names a method twice"),
        (["--data_fraction", "1.5"], "--data_fraction must be in (0, 1)"),
        (["--method", "fedit"], "takes --methods"),
    ],
)
def test_bad_bench_flags_fail_in_one_line(argv, fragment, capsys, tmp_path):
    assert main(["bench", "--output_dir", str(tmp_path / "b"), *argv]) == 1
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "neither a bench folder" in capsys.readouterr().err
