"""Bad inputs a new user tries end in one line naming the option, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from smartfed.cli.main import main
from smartfed.errors import ConfigError
from smartfed.methods import build_method
from smartfed.pool import load_pool

from ..conftest import make_tiny_llama


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("smartfed: error: ") and "internal error" not in lines[0]
    return lines[0]


@pytest.fixture
def tiny_run_argv(tiny_task, tiny_model_dir, make_adapter) -> list[str]:
    """A small run's flags: two rank-4 adapters on q_proj and v_proj, so M_ℓ = 8 everywhere."""
    pool = ",".join(str(make_adapter(name, r=4, seed=i)) for i, name in enumerate(("pa", "pb")))
    return ["run", "--model_name_or_path", str(tiny_model_dir), "--task", tiny_task,
            "--lora_pool", pool, "--num_clients", "2", "--num_rounds", "1", "--local_steps", "1",
            "--eval_samples", "0"]  # fmt: skip


@pytest.mark.parametrize("dry_run", [False, True])
def test_topk_above_every_capacity_is_refused_naming_the_largest(
    tiny_run_argv, tmp_path, capsys, dry_run
):
    capsys.readouterr()
    argv = [*tiny_run_argv, "--topk_experts", "100000", "--output_dir", str(tmp_path / "run")]
    code = main(argv + (["--dry_run"] if dry_run else []))
    line = _one_line_error(code, capsys.readouterr().err)
    assert "--topk_experts 100000" in line and "the largest has M = 8" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_topk_above_some_capacities_keeps_min_k_m_per_matrix(tiny_run_config, make_adapter):
    """By design: q_proj has M = 8, v_proj M = 4; K = 6 starts q at 6 and v at all 4."""
    both = make_adapter("both", r=4, targets=("q_proj", "v_proj"))
    q_only = make_adapter("q_only", r=4, targets=("q_proj",))
    config = tiny_run_config(lora_pool=f"{both},{q_only}", topk_experts=6)
    method = build_method(config, make_tiny_llama(), load_pool(config.pool_items))
    capacities = method.model.capacities
    assert sorted(set(capacities.tolist())) == [4, 8]
    assert np.array_equal(method.model.get_quotas(), np.minimum(6, capacities))

    refused = tiny_run_config(lora_pool=f"{both},{q_only}", topk_experts=9)
    with pytest.raises(ConfigError, match="the largest has M = 8"):
        build_method(refused, make_tiny_llama(), load_pool(refused.pool_items))


def test_output_dir_that_is_a_file_is_one_line(tiny_run_argv, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    capsys.readouterr()
    code = main([*tiny_run_argv, "--output_dir", str(existing)])
    line = _one_line_error(code, capsys.readouterr().err)
    assert f"--output_dir {existing}" in line and "existing file" in line
    assert existing.read_text() == "mine"

    code = main([*tiny_run_argv, "--output_dir", str(existing / "run")])
    line = _one_line_error(code, capsys.readouterr().err)
    assert "--output_dir" in line and f"{existing} is a file" in line


def test_output_dir_where_nothing_can_be_written_is_one_line(tiny_run_argv, tmp_path, capsys):
    capsys.readouterr()
    code = main([*tiny_run_argv, "--output_dir", "/proc/smartfed-nope/run"])  # no mkdir in /proc
    line = _one_line_error(code, capsys.readouterr().err)
    assert "--output_dir /proc/smartfed-nope/run: cannot create or write" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_output_dir_in_a_read_only_folder_is_one_line(tiny_run_argv, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        capsys.readouterr()
        code = main([*tiny_run_argv, "--output_dir", str(locked / "run")])
        assert "cannot create or write" in _one_line_error(code, capsys.readouterr().err)
    finally:
        locked.chmod(0o755)


def test_a_usable_output_dir_is_checked_without_leaving_anything(tmp_path):
    from smartfed.engine.rundir import check_output_dir

    check_output_dir(tmp_path / "a" / "b" / "run")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("benchmark", ["loss", "gsm8k"])
def test_eval_of_a_missing_run_names_run_not_resume(tmp_path, capsys, benchmark):
    capsys.readouterr()
    code = main(["eval", "--benchmark", benchmark, "--run", str(tmp_path / "MISSING")])
    line = _one_line_error(code, capsys.readouterr().err)
    assert f"--run {tmp_path / 'MISSING'}" in line and "--resume" not in line
    (tmp_path / "empty").mkdir()
    code = main(["eval", "--benchmark", benchmark, "--run", str(tmp_path / "empty")])
    assert "--run" in _one_line_error(code, capsys.readouterr().err)


def test_resume_of_a_missing_run_names_resume(tmp_path, capsys):
    capsys.readouterr()
    code = main(["run", "--resume", str(tmp_path / "MISSING")])
    assert "--resume" in _one_line_error(code, capsys.readouterr().err)


def test_validate_needs_no_tokenizer(tmp_path, capsys, make_adapter):
    """A model folder with weights and config only: validation reads shapes and names."""
    model_dir = tmp_path / "weights-only"
    make_tiny_llama().save_pretrained(model_dir)
    assert not any(p.name.startswith("tokenizer") for p in Path(model_dir).iterdir())
    capsys.readouterr()
    code = main(["pool", "validate", str(make_adapter("good", r=4)), "--model", str(model_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK: 4 matrices fit weights-only" in out
