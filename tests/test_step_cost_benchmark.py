"""benchmarks/step_cost.py runs every suite end to end on the tiny random LLaMA (so the benchmark
cannot rot unnoticed), and its records say what was measured."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from smartfed.testing import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def step_cost() -> ModuleType:
    spec = importlib.util.spec_from_file_location("step_cost", ROOT / "benchmarks" / "step_cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TINY_RUN = [
    "--model", "tiny", "--dtypes", "float32", "--repeats", "2", "--warmup", "1",
    "--batch_size", "2", "--seq_len", "8", "--pool_rank", "2", "--router_k", "2",
    "--routers", "linear,diag_lowrank", "--pool_sizes", "1,2", "--sparse_pools", "2",
    "--sparse_k", "1",
]  # fmt: skip


@pytest.mark.slow  # about 15 s of CPU: the default suite runs the fast test below
def test_every_suite_runs_and_records_what_it_measured(step_cost, tmp_path):
    out = tmp_path / "step_cost.json"
    step_cost.main([*TINY_RUN, "--suite", "all", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["format"] == step_cost.JSON_FORMAT
    assert set(data["suites"]) == set(step_cost.SUITES)
    runs = {name: suite["by_dtype"]["float32"] for name, suite in data["suites"].items()}

    methods = runs["methods"]["variants"]
    assert list(methods) == ["base", "fedit", "smartfed", "mole"]
    for record in methods.values():
        assert len(record["times_s"]) == 2 and record["median_s"] > 0
        assert math.isfinite(record["time_vs_base_paired"]) and record["tokens_per_s"] > 0
        assert record["static_bytes"] > 0
        if sys.platform.startswith("linux"):
            assert record["step_peak_bytes"] >= 0
            assert record["peak_bytes"] == record["static_bytes"] + record["step_peak_bytes"]
    assert methods["base"]["time_vs_base"] == 1.0 and methods["base"]["trainable_parameters"] == 0
    # Tiny LLaMA (hidden 32, 2 layers; q 32->32, v 32->16), two rank-2 modules on q and v:
    # 4 matrices of M = 4 experts. SmartFed's default router, diag_lowrank (rank 4), sends
    # 2 x 4 + 2 x 4 x 4 values per matrix (as in the sparse test below; the linear router's
    # M x d_in is the routers suite's); FedIT trains a rank-2 LoRA:
    # 2 layers x (2 (32 + 32) + 2 (32 + 16)) values.
    assert methods["smartfed"]["resolved_settings"]["router"] == "diag_lowrank"
    assert methods["smartfed"]["communicated_values"] == 4 * (2 * 4 + 2 * 4 * 4)
    assert methods["smartfed"]["experts_per_matrix"] == [4]
    assert methods["fedit"]["trainable_parameters"] == 2 * (2 * 64 + 2 * 48)

    routers = runs["routers"]["variants"]
    assert set(routers) == {
        "base", "lora", "linear/dense", "linear/top2", "diag_lowrank/dense", "diag_lowrank/top2"
    }  # fmt: skip
    assert routers["lora"]["trainable_parameters"] == 2 * (4 * 64 + 4 * 48)  # rank M = 4
    assert routers["lora"]["time_vs_lora"] == 1.0
    assert routers["diag_lowrank/top2"]["quotas"] == [2]
    assert routers["linear/dense"]["communicated_values"] == 4 * 4 * 32  # M x d_in per matrix

    growth = runs["pool_size"]["growth"]  # the linear router, as the suite's table says
    assert [g["experts_per_matrix"] for g in growth] == [2, 4]
    assert [g["more_values_per_matrix"] for g in growth] == [2 * 32, 4 * 32]

    sparse = runs["sparse"]
    assert [(c["experts_per_matrix"], c["top_k"]) for c in sparse["comparison"]] == [(4, 1)]
    assert sparse["comparison"][0]["sparse_vs_dense_paired"] > 0
    # The two paths compute the same function: same losses step after step.
    dense, fast = sparse["variants"]["M4/K1/dense"], sparse["variants"]["M4/K1/sparse"]
    assert fast["losses"] == pytest.approx(dense["losses"], rel=1e-5)
    assert "verdict" in sparse

    report = step_cost.markdown_report(data)  # every suite writes its own table
    assert all(f"### {name} (" in report for name in step_cost.SUITES)
    assert "| modules | M | SmartFed s |" in report and f"Verdict: {sparse['verdict']}." in report


@pytest.mark.integration  # a whole run end to end
def test_sparse_suite_compares_two_paths_of_the_same_function(step_cost):
    results = step_cost.main(
        [*TINY_RUN, "--suite", "sparse", "--warmup", "0", "--sparse_k", "1,4"]
    )  # K = 4 = M selects every expert: no comparison is made for it
    sparse = results["sparse"]["by_dtype"]["float32"]
    assert [(c["experts_per_matrix"], c["top_k"]) for c in sparse["comparison"]] == [(4, 1)]
    dense, fast = sparse["variants"]["M4/K1/dense"], sparse["variants"]["M4/K1/sparse"]
    assert dense["resolved_settings"]["expert_path"] == "dense"
    assert fast["resolved_settings"]["expert_path"] == "sparse"
    assert fast["losses"] == pytest.approx(dense["losses"], rel=1e-5)
    # SmartFed's default router, diag_lowrank (rank 4), on 4 matrices of M = 4 experts.
    assert fast["communicated_values"] == dense["communicated_values"] == 4 * (2 * 4 + 2 * 4 * 4)


@pytest.mark.integration  # a whole run end to end
def test_json_keeps_the_suites_a_later_run_did_not_measure(step_cost, tmp_path):
    out = tmp_path / "step_cost.json"
    out.write_text(json.dumps({"format": step_cost.JSON_FORMAT, "suites": {"sparse": {"x": 1}}}))
    step_cost.main([*TINY_RUN, "--suite", "methods", "--methods", "fedit", "--no_memory",
                    "--repeats", "1", "--json", str(out)])  # fmt: skip
    suites = json.loads(out.read_text())["suites"]
    assert suites["sparse"] == {"x": 1}
    assert list(suites["methods"]["by_dtype"]["float32"]["variants"]) == ["base", "fedit"]
    assert suites["methods"]["by_dtype"]["float32"]["variants"]["fedit"]["peak_bytes"] is None


def test_suites_register_themselves_in_order_and_tiny_is_the_tests_model(step_cost):
    assert list(step_cost.SUITES) == ["methods", "routers", "pool_size", "sparse"]
    assert all(suite.name == name for name, suite in step_cost.SUITES.items())
    # --model tiny is the tests' tiny LLaMA itself (one TINY, from smartfed.testing).
    tiny = step_cost.random_llama_config("tiny")
    assert {key: getattr(tiny, key) for key in TINY} == TINY


def test_random_model_specs_have_smollm2_layout(step_cost):
    config = step_cost.random_llama_config("random")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        576,
        30,
        9,
    )
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (
        3, 1536, 49152
    )  # fmt: skip
    small = step_cost.random_llama_config("random:192x2")
    assert (small.num_attention_heads, small.num_key_value_heads, small.intermediate_size) == (
        3, 1, 512
    )  # fmt: skip
    assert step_cost.random_llama_config("smollm2-135m-instruct") is None
    with pytest.raises(SystemExit):
        step_cost.parse_args(["--suite", "everything"])
