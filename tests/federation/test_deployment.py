"""The Flower App in ``flower-app/``: its run config, its bundle, and a real deployed run.

The fast tests check ``flower-app/pyproject.toml`` against ``RunConfig`` and Flower's own
config parsing. The slow test starts a real SuperLink and two SuperNodes on loopback (free
ports picked at run time, Flower state in tmp dirs) and runs two rounds through ``flwr run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from smartfed.engine.config import RunConfig
from smartfed.federation.settings import from_run_config, to_run_config
from smartfed.methods.fresh_lora import FreshLoraSettings
from smartfed.methods.smartfed import SmartFedSettings

APP_DIR = Path(__file__).resolve().parents[2] / "flower-app"
BIN = Path(sys.executable).parent
NOT_DECLARED = {"engine", "preset"}  # meaningless for a deployed run
RUN_TIMEOUT_S = 240.0


def _declared() -> dict:
    """The app's run config as Flower sees it (nested tables flattened to dotted keys)."""
    from flwr.common.config import flatten_dict

    with (APP_DIR / "pyproject.toml").open("rb") as handle:
        return flatten_dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


# ---------------------------------------------------------------------------- fast checks
def test_app_config_is_generated_from_the_settings_and_current():
    from smartfed.cli.scaffold_command import MARKER, generated_pyproject

    current = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    assert generated_pyproject(current) == current, "run `smartfed scaffold flower-app`"
    assert MARKER in current and "smartfed scaffold flower-app" in MARKER
    declared = _declared()
    assert "num-rounds" in declared and "smartfed.topk-experts" in declared
    assert "fedit.lora-rank" in declared and "topk-experts" not in declared
    assert not NOT_DECLARED & set(declared)
    assert from_run_config(declared) == RunConfig(settings=SmartFedSettings())
    assert from_run_config({**declared, "method": "fedit"}).settings == FreshLoraSettings()


def test_a_stale_app_config_fails_the_check(tmp_path, capsys):
    from smartfed.cli.main import main

    stale = tmp_path / "pyproject.toml"
    text = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    stale.write_text(text.replace("num-rounds = 20", "num-rounds = 21"), encoding="utf-8")
    assert main(["scaffold", "flower-app", "--path", str(stale), "--check"]) == 1
    assert "is stale: run `smartfed scaffold flower-app`" in capsys.readouterr().err


def test_generate_is_a_deprecated_alias_of_scaffold(tmp_path, capsys):
    """`smartfed generate` (SmartFed 0.1's name) still works for one release, says it is
    deprecated, and rewrites a file that carries the old marker line with the new one."""
    from smartfed.cli.main import main
    from smartfed.cli.scaffold_command import MARKER, OLD_MARKER

    old = tmp_path / "pyproject.toml"
    text = (APP_DIR / "pyproject.toml").read_text(encoding="utf-8")
    old.write_text(text.replace(MARKER, OLD_MARKER), encoding="utf-8")
    assert main(["generate", "flower-app", "--path", str(old)]) == 0
    err = capsys.readouterr().err
    assert "`smartfed generate` is deprecated" in err and "smartfed scaffold flower-app" in err
    assert old.read_text(encoding="utf-8") == text


def test_command_line_overrides_parse_like_flwr_run(tmp_path):
    from flwr.common.config import fuse_dicts, parse_config_args

    overrides = parse_config_args(
        [
            "num-rounds=3 lora-pool='a,b' smartfed.learning-rate=1 smartfed.enable-eeqa=false",
            'data-dir="/d"',
        ]
    )
    config = from_run_config(fuse_dicts(_declared(), overrides))
    assert (config.num_rounds, config.lora_pool, config.data_dir) == (3, "a,b", "/d")
    assert config.settings.learning_rate == 1.0 and config.settings.enable_eeqa is False
    assert config.pool_manifest is None  # "" stands for None
    # Keys must be declared in the app's config; flwr run refuses the others.
    with pytest.raises(ValueError, match="not present"):
        fuse_dicts(_declared(), parse_config_args(["num-round=3"]))
    # Another method's namespace does not leak into this run.
    other = from_run_config(fuse_dicts(_declared(), parse_config_args(["fedit.lora-rank=2"])))
    assert other.method == "smartfed" and not hasattr(other.settings, "lora_rank")
    # -c FILE.toml: the same overrides from a file.
    (tmp_path / "run.toml").write_text("num-rounds = 4\ntask = 'gsm8k'\n")
    config = from_run_config(
        fuse_dicts(_declared(), parse_config_args([str(tmp_path / "run.toml")]))
    )
    assert (config.num_rounds, config.task) == (4, "gsm8k")
    # A SuperNode's node config points at its local copies.
    node = from_run_config(_declared(), {"partition-id": 0, "model-path": "/m", "data-dir": "/x"})
    assert (node.model_name_or_path, node.data_dir) == ("/m", "/x")


def test_app_bundle_is_small():
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.constant import FAB_MAX_SIZE

    fab = build_fab_from_disk(APP_DIR)
    assert 0 < len(fab) < FAB_MAX_SIZE // 100


# ---------------------------------------------------------------------------- deployment
def flower_env() -> dict[str, str]:
    """The environment of the Flower processes a test starts: no inherited FLWR_* or run
    config, this venv's flwr-serverapp / flwr-clientapp first on PATH, offline, one thread."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLWR_")}
    env.pop("SMARTFED_RUN_CONFIG", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # flwr-serverapp / flwr-clientapp
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    value = "" if value is None else str(value)
    assert "'" not in value and "\n" not in value, value
    return f"'{value}'"  # a TOML literal string: no escapes


class _Processes:
    """Started processes, each in its own session, logging to a file."""

    def __init__(self, log_dir: Path, base_env: dict[str, str]):
        self.log_dir = log_dir
        self.base_env = base_env
        self.started: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.base_env, **env},
                cwd=self.log_dir,
                start_new_session=True,
            )
        self.started.append((name, proc, log))
        return proc

    def check_alive(self) -> None:
        for name, proc, _ in self.started:
            if name != "flwr-run" and proc.poll() is not None:
                raise AssertionError(f"{name} exited early with code {proc.returncode}")

    def logs(self) -> str:
        parts = []
        for name, _, log in self.started:
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"===== {name} =====\n{text[-20000:]}")
        return "\n".join(parts)

    def stop_all(self) -> None:
        # Flower detaches some helpers (SuperExec starts in a new session), so collect every
        # descendant before signalling the process groups we started.
        victims: dict[int, psutil.Process] = {}
        for _, proc, _ in self.started:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                for child in [parent, *parent.children(recursive=True)]:
                    victims[child.pid] = child
        for _, proc, _ in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for child in victims.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        _, alive = psutil.wait_procs(list(victims.values()), timeout=10)
        for _, proc, _ in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(alive, timeout=5)
        for _, proc, _ in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _wait_for_port(port: int, procs: _Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


@pytest.mark.slow
def test_two_rounds_on_a_real_superlink_and_two_supernodes(tiny_run_config, tmp_path):
    for tool in ("flower-superlink", "flower-supernode", "flwr"):
        assert (BIN / tool).exists() or shutil.which(tool), f"{tool} is not installed"
    run_dir = tmp_path / "deployed-run"
    config = tiny_run_config(
        num_clients=2, sample_clients=2, num_rounds=2, eval_samples=4, output_dir=str(run_dir)
    )
    declared = _declared()
    values = to_run_config(config)
    overrides = " ".join(
        f"{key}={_toml_value(value)}"
        for key, value in values.items()
        if key in declared and value != declared[key]
    )

    work = tmp_path / "flower"
    work.mkdir()
    superlink_port, node0_port, node1_port = _free_ports(3)
    env = flower_env()
    homes = {name: work / f"home-{name}" for name in ("superlink", "node0", "node1", "cli")}
    for home in homes.values():
        home.mkdir()
    (homes["cli"] / "config.toml").write_text(
        '[superlink]\ndefault = "smartfed-test"\n\n'
        f'[superlink.smartfed-test]\naddress = "127.0.0.1:{superlink_port}"\ninsecure = true\n'
    )

    procs = _Processes(work, env)
    started = time.monotonic()
    try:
        procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"), "--insecure",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(superlink_port),
            ],
            FLWR_HOME=str(homes["superlink"]),
        )  # fmt: skip
        _wait_for_port(superlink_port, procs)
        for partition, port in ((0, node0_port), (1, node1_port)):
            procs.start(
                f"node{partition}",
                [
                    str(BIN / "flower-supernode"), "--insecure",
                    "--superlink", f"127.0.0.1:{superlink_port}",
                    "--node-config", f"partition-id={partition} num-partitions=2",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                FLWR_HOME=str(homes[f"node{partition}"]),
            )  # fmt: skip
        run = procs.start(
            "flwr-run",
            [str(BIN / "flwr"), "run", str(APP_DIR), "smartfed-test", "--stream", "-c", overrides],
            FLWR_HOME=str(homes["cli"]),
        )
        deadline = started + RUN_TIMEOUT_S
        while run.poll() is None and time.monotonic() < deadline:
            procs.check_alive()
            time.sleep(1.0)
        assert run.poll() is not None, f"flwr run did not finish within {RUN_TIMEOUT_S:.0f} s"
        assert run.returncode == 0, f"flwr run exited with code {run.returncode}"

        assert (run_dir / "summary.json").exists(), "the ServerApp wrote no summary.json"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [row["round"] for row in rows] == [1, 2]
        assert all(row["bytes_up"] > 0 and len(row["sampled_clients"]) == 2 for row in rows)
        assert (run_dir / "final" / "routers.safetensors").exists()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds"] == 2
        saved = json.loads((run_dir / "config.json").read_text())
        assert {k: saved[k] for k in ("task", "lora_pool", "num_clients")} == {
            "task": config.task,
            "lora_pool": config.lora_pool,
            "num_clients": 2,
        }
        # Both SuperNodes trained: each partition's node shows up among the sampled ones.
        assert len({node for row in rows for node in row["sampled_clients"]}) == 2
    except BaseException:
        print(f"deployment test failed after {time.monotonic() - started:.1f} s")
        print(f"run config overrides: {overrides}")
        procs.stop_all()
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
