"""Nothing lost under faults: one writer per run directory, rounds committed atomically with
checksummed checkpoints, and one-line errors for a full disk or a damaged run file."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from safetensors.torch import load_file

from smartfed.cli.main import main
from smartfed.federation import client_app as smartfed_client
from smartfed.federation.runner import run_federated
from smartfed.utils import io as smartfed_io

from .crashing import CrashAtRound


def _argv(config, output_dir: Path, *extra: str) -> list[str]:
    """`smartfed run` flags for the tiny run ``config`` describes."""
    return [
        "run", "--model_name_or_path", config.model_name_or_path, "--lora_pool", config.lora_pool,
        "--task", config.task, "--num_clients", "4", "--sample_clients", "2",
        "--num_rounds", str(config.num_rounds), "--local_steps", "2", "--batch_size", "4",
        "--learning_rate", "0.05", "--max_seq_len", "64", "--topk_experts", "3",
        "--router", "linear", "--eval_samples", "0", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def _error_line(code: int, err: str) -> str:
    """The one error line of a failed command: exit 1, no traceback, no internal error (the
    progress lines of the rounds that ran before it may precede it on stderr)."""
    errors = [line for line in err.splitlines() if line.startswith("smartfed:")]
    assert code == 1 and len(errors) == 1, err
    assert "Traceback" not in err and "internal error" not in errors[0], err
    assert errors[0].startswith("smartfed: error: ")
    return errors[0]


def _rounds(run: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (but its lock), by path, with its bytes."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def _assert_same_routers(run: Path, reference: Path) -> None:
    expected = load_file(str(reference / "final" / "routers.safetensors"))
    got = load_file(str(run / "final" / "routers.safetensors"))
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- one writer per run directory
class _SecondRunAt:
    """A ClientApp that, at one round of the run it serves, starts a second `smartfed run` into
    the same directory (in another process, or in this one) and records its exit code, its
    stderr and whether the directory changed meanwhile."""

    def __init__(self, server_round: int, argv: list[str], run: Path, *, subprocess: bool):
        self.server_round, self.argv, self.run = server_round, argv, run
        self.in_subprocess = subprocess
        self.result: tuple[int, str] | None = None
        self.unchanged: bool | None = None
        self.app = ClientApp()
        self.app.train()(self.train)

    def train(self, msg: Message, context: Context) -> Message:
        if int(msg.content["config"]["server-round"]) == self.server_round and not self.result:
            before = _files(self.run)
            self.result = self._second_run()
            self.unchanged = _files(self.run) == before
        return smartfed_client.train(msg, context)

    def _second_run(self) -> tuple[int, str]:
        if self.in_subprocess:
            other = subprocess.run(
                [sys.executable, "-m", "smartfed.cli.main", *self.argv],
                capture_output=True, text=True, timeout=300,
                env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
            )  # fmt: skip
            return other.returncode, other.stderr
        stderr, sys.stderr = sys.stderr, StringIO()
        try:
            return main(self.argv), sys.stderr.getvalue()
        finally:
            sys.stderr = stderr


def test_a_second_run_in_this_process_is_refused_and_changes_nothing(tiny_run_config):
    config = tiny_run_config(num_rounds=2, eval_samples=0)
    run = Path(config.output_dir)
    second = _SecondRunAt(2, _argv(config, run), run, subprocess=False)
    run_federated(config, client_app=second.app)

    line = _error_line(*second.result)
    assert f"{run} is being written by another run in this process (pid {os.getpid()})" in line
    assert second.unchanged  # the first run's files, byte for byte
    assert _rounds(run) == [1, 2] and (run / "summary.json").is_file()


@pytest.mark.slow  # a second Python process imports torch, transformers and Flower
def test_a_second_process_on_a_busy_directory_is_refused_and_changes_nothing(tiny_run_config):
    config = tiny_run_config(num_rounds=2, eval_samples=0)
    run = Path(config.output_dir)
    second = _SecondRunAt(2, _argv(config, run), run, subprocess=True)
    run_federated(config, client_app=second.app)

    line = _error_line(*second.result)
    assert f"{run} is being written by another smartfed run (pid {os.getpid()}" in line
    assert second.unchanged  # the first run's files, byte for byte
    assert _rounds(run) == [1, 2] and (run / "summary.json").is_file()
    assert (run / "run.lock").read_text().strip() == str(os.getpid())


def test_a_new_run_in_a_used_directory_needs_overwrite(tiny_run_config, capsys):
    config = tiny_run_config(num_rounds=1, eval_samples=0)
    run = Path(config.output_dir)
    run_federated(config)
    (run / "notes.txt").write_text("mine")
    (run / "final.txt").write_text("mine too")  # named like a run file, but not one
    before = _files(run)

    capsys.readouterr()
    line = _error_line(main(_argv(config, run)), capsys.readouterr().err)
    assert f"{run} already holds a run (checkpoint of round 1" in line
    assert "--resume" in line and "--overwrite" in line
    assert _files(run) == before

    # A folder with someone else's files only is refused too.
    other = run.parent / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    line = _error_line(main(_argv(config, other)), capsys.readouterr().err)
    assert f"{other} already holds files (notes.txt)" in line

    assert main(_argv(config, run, "--overwrite")) == 0, capsys.readouterr().err
    assert _rounds(run) == [1]
    assert (run / "notes.txt").read_text() == "mine"  # not run files: kept
    assert (run / "final.txt").read_text() == "mine too"
    assert json.loads((run / "config.json").read_text())["overwrite"] is True
    assert main(["run", "--resume", str(run), "--overwrite"]) == 1  # a resume overwrites nothing


def test_overwrite_help_says_what_it_deletes(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "deletes the previous run's files" in text
    assert "other files are kept" in text


# ---------------------------------------------------------------- damaged checkpoints
def _damage(folder: Path, how: str) -> None:
    if how == "truncated":
        path = folder / "global_state.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty_state":
        (folder / "state.json").write_text("{}")
    else:
        (folder / "global_state.safetensors").unlink()


@pytest.mark.parametrize("how", ["truncated", "empty_state"])
def test_resume_falls_back_past_a_damaged_checkpoint(tiny_run_config, tmp_path, caplog, how):
    reference = tiny_run_config(output_dir=str(tmp_path / "reference"), eval_samples=0)
    run_federated(reference)
    config = tiny_run_config(output_dir=str(tmp_path / "crashed"), eval_samples=0)
    run = Path(config.output_dir)
    with pytest.raises(KeyboardInterrupt):
        run_federated(config, client_app=CrashAtRound(3).app)
    assert _rounds(run) == [1, 2]
    _damage(run / "checkpoints" / "round_0002", how)

    with caplog.at_level(logging.INFO):
        assert main(["run", "--resume", str(run)]) == 0
    said = [r.getMessage() for r in caplog.records if "instead" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0], said
    assert "resuming from round 1 instead" in said[0] and "round_0002" in said[0]
    assert _rounds(run) == [1, 2, 3]
    # Round 1's state replayed rounds 2 and 3 exactly as the uninterrupted run did.
    _assert_same_routers(run, Path(reference.output_dir))


# ---------------------------------------------------------------- a full disk
@pytest.mark.parametrize("where", ["checkpoint", "metrics"])
def test_a_full_disk_stops_in_one_line_and_the_run_resumes(
    tiny_run_config, tmp_path, capsys, monkeypatch, where
):
    reference = tiny_run_config(output_dir=str(tmp_path / "reference"), eval_samples=0)
    run_federated(reference)
    config = tiny_run_config(output_dir=str(tmp_path / "full"), eval_samples=0)
    run = Path(config.output_dir)
    real_fsync = smartfed_io.fsync_path

    def full_disk(path):  # round 2 finds the disk full
        name = Path(path).name
        if (where == "checkpoint" and ".round_0002." in str(path)) or (
            where == "metrics"
            and name.startswith(".metrics.jsonl.")
            and (run / "checkpoints" / "round_0002").exists()
        ):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_fsync(path)

    monkeypatch.setattr(smartfed_io, "fsync_path", full_disk)
    capsys.readouterr()
    line = _error_line(main(_argv(config, run)), capsys.readouterr().err)
    target = run / ("checkpoints/round_0002" if where == "checkpoint" else "metrics.jsonl")
    assert f"cannot write {target}: No space left on device; free some space" in line
    assert f"`smartfed run --resume {run}` continues from the last committed round" in line
    # No file describes round 2 unless it was committed; no temporary file is left.
    assert _rounds(run) == [1]
    committed = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert committed == (["round_0001"] if where == "checkpoint" else ["round_0001", "round_0002"])
    assert not [p for p in run.rglob(".*") if p.name != "run.lock"]

    monkeypatch.setattr(smartfed_io, "fsync_path", real_fsync)  # space is freed
    assert main(["run", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert _rounds(run) == [1, 2, 3]
    _assert_same_routers(run, Path(reference.output_dir))


# ---------------------------------------------------------------- refused resumes write nothing
@pytest.mark.parametrize("damage", ["metrics_cut_mid_line", "every_checkpoint_damaged"])
def test_a_refused_resume_leaves_config_json_untouched(tiny_run_config, capsys, damage):
    config = tiny_run_config(num_rounds=3, eval_samples=0)
    run = Path(config.output_dir)
    with pytest.raises(KeyboardInterrupt):
        run_federated(config, client_app=CrashAtRound(3).app)
    if damage == "metrics_cut_mid_line":
        text = (run / "metrics.jsonl").read_text()
        (run / "metrics.jsonl").write_text(text[: len(text) - 40])
        named = "metrics.jsonl:2"
    else:
        for folder in (run / "checkpoints").iterdir():
            _damage(folder, "empty_state")
        named = "checkpoints"
    # Written in another layout than SmartFed's: any rewrite would show.
    config_path = run / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()), indent=4))
    before, stat = _files(run), config_path.stat()

    capsys.readouterr()
    line = _error_line(main(["run", "--resume", str(run)]), capsys.readouterr().err)
    assert named in line and "damaged" in line
    assert _files(run) == before
    assert config_path.stat().st_ino == stat.st_ino
    assert config_path.stat().st_mtime_ns == stat.st_mtime_ns


# ---------------------------------------------------------------- damaged files elsewhere
def test_damaged_run_files_are_one_line_in_eval_report_and_resume(tiny_run_config, capsys):
    config = tiny_run_config(num_rounds=1, eval_samples=4)
    run = Path(config.output_dir)
    run_federated(config)
    capsys.readouterr()

    def refused(argv: list[str], *fragments: str) -> None:
        line = _error_line(main(argv), capsys.readouterr().err)
        assert all(f in line for f in fragments), line

    routers = run / "final" / "routers.safetensors"
    whole = routers.read_bytes()
    routers.write_bytes(whole[:50])
    refused(["eval", "--benchmark", "loss", "--run", str(run)], str(run / "final"), "damaged")
    routers.write_bytes(whole)

    metrics = run / "metrics.jsonl"
    rows = metrics.read_text()
    metrics.write_text(rows[:-30])
    refused(["report", str(run)], f"{metrics}:1 is damaged")
    metrics.write_text(rows)
    summary = run / "summary.json"
    summary.write_text("[]")
    refused(["report", str(run)], f"{summary} is damaged")
    summary.unlink()
    refused(["report", str(run)], "neither a bench folder")

    config_json = run / "config.json"
    config_json.write_text("[]")
    refused(["eval", "--benchmark", "loss", "--run", str(run)], f"{config_json} is damaged")
    refused(["run", "--resume", str(run)], f"{config_json} is damaged")
    config_json.write_text('{"method": "smartfed", "config_format": 2, "method_settings": 3}')
    refused(["run", "--resume", str(run)], "config.json: method_settings is damaged")


def test_a_bench_rerun_over_a_damaged_entry_is_one_line(tiny_run_config, tmp_path, capsys):
    config = tiny_run_config()
    out = tmp_path / "bench"
    argv = [
        "bench", "--methods", "fedit", "--model_name_or_path", config.model_name_or_path,
        "--lora_pool", config.lora_pool, "--task", config.task, "--num_clients", "2",
        "--sample_clients", "2", "--num_rounds", "1", "--local_steps", "1",
        "--max_seq_len", "64", "--eval_samples", "4", "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    metrics = out / "fedit" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])
    capsys.readouterr()
    line = _error_line(main(argv), capsys.readouterr().err)
    assert f"{metrics}:1 is damaged" in line
    (out / "bench.json").write_text("{}")
    line = _error_line(main(["report", str(out)]), capsys.readouterr().err)
    assert f"{out / 'bench.json'} is damaged" in line

    # An entry interrupted before its first round (config.json only) resumes, not refused.
    entry = out / "fedit"
    for name in os.listdir(entry):
        if name != "config.json":
            path = entry / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "bench.json").unlink()
    assert main(argv) == 0, capsys.readouterr().err
    assert _rounds(entry) == [1]
    assert main([*argv, "--overwrite"]) == 1
