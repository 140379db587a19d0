"""Deployed runs with security on, on loopback (free ports, Flower state in tmp dirs):

- SecAgg+ (``secure-aggregation=true``) between two real SuperNodes, whose round equals plain
  FedAvg's within the quantisation bound;
- TLS (a CA and a server certificate made here) with SuperNode authentication: two registered
  SuperNodes train, one with an unregistered key and one with no key are refused.

The processes and helpers are those of ``test_deployment.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smartfed.assembly.runtime import get_runtime
from smartfed.engine.config import RunConfig
from smartfed.federation.settings import to_run_config

from .test_deployment import (
    APP_DIR,
    BIN,
    RUN_TIMEOUT_S,
    _declared,
    _free_ports,
    _Processes,
    _toml_value,
    _wait_for_port,
    flower_env,
)
from .test_secure_aggregation import largest_difference, round_state, rows, worst_case_tolerance

CONNECTION = "smartfed-test"


# ---------------------------------------------------------------------------- credentials
def write_tls_files(folder: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate it signed, for 127.0.0.1 and localhost."""
    folder.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=1)}  # fmt: skip
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SmartFed test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, **valid)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    alt_names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = (
        x509.CertificateBuilder(subject_name=server_name, issuer_name=ca_name, **valid)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def write_node_key(path: Path) -> Path:
    """A SuperNode's P-384 key pair in OpenSSH format (``path`` and ``path.pub``, as
    ``ssh-keygen -t ecdsa -b 384`` writes them); returns the public key's path."""
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = path.with_name(path.name + ".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return public


# ---------------------------------------------------------------------------- federation
class Federation:
    """A SuperLink, its SuperNodes and the Flower CLI, on loopback; TLS when given files."""

    def __init__(self, work: Path, tls: dict[str, Path] | None = None):
        work.mkdir(exist_ok=True)
        self.work = work
        self.tls = tls
        self.port = _free_ports(1)[0]
        env = flower_env()
        self.env = env
        self.procs = _Processes(work, env)
        self.services: list[subprocess.Popen] = []  # must stay up: the SuperLink and nodes
        security = (
            f'root-certificates = "{tls["ca"]}"\n' if tls else "insecure = true\n"
        )  # fmt: skip
        self.cli_home = self.home("cli")
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}'
        )

    def home(self, name: str) -> Path:
        home = self.work / f"home-{name}"
        home.mkdir(exist_ok=True)
        return home

    def start_superlink(self, *extra: str) -> None:
        security = (
            ["--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["cert"]),
             "--ssl-keyfile", str(self.tls["key"])]
            if self.tls else ["--insecure"]
        )  # fmt: skip
        superlink = self.procs.start(
            "superlink",
            [
                str(BIN / "flower-superlink"), *security, *extra,
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.port),
            ],
            FLWR_HOME=str(self.home("superlink")),
        )  # fmt: skip
        self.services.append(superlink)
        _wait_for_port(self.port, self.procs)

    def start_supernode(
        self, name: str, partition: int, num_partitions: int, *extra: str, refused: bool = False
    ) -> subprocess.Popen:
        """A SuperNode; one expected to be ``refused`` may exit without failing the run."""
        security = ["--root-certificates", str(self.tls["ca"])] if self.tls else ["--insecure"]
        node = self.procs.start(
            name,
            [
                str(BIN / "flower-supernode"), *security, *extra,
                "--superlink", f"127.0.0.1:{self.port}",
                "--node-config", f"partition-id={partition} num-partitions={num_partitions}",
                "--host", "127.0.0.1", "--port", str(_free_ports(1)[0]),
            ],
            FLWR_HOME=str(self.home(name)),
        )  # fmt: skip
        if not refused:
            self.services.append(node)
        return node

    def check_alive(self) -> None:
        for name, proc, _ in self.procs.started:
            if proc in self.services and proc.poll() is not None:
                raise AssertionError(f"{name} exited early with code {proc.returncode}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """A ``flwr`` command against this federation (its output for the assertion message)."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env={**self.env, "FLWR_HOME": str(self.cli_home)},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def run(self, name: str, config: RunConfig, timeout_s: float = RUN_TIMEOUT_S) -> Path:
        """``flwr run`` of ``config`` to its end; the run directory, checked complete."""
        declared = _declared()
        overrides = " ".join(
            f"{key}={_toml_value(value)}"
            for key, value in to_run_config(config).items()
            if key in declared and value != declared[key]
        )
        run = self.procs.start(
            name,
            [str(BIN / "flwr"), "run", str(APP_DIR), CONNECTION, "--stream", "-c", overrides],
            FLWR_HOME=str(self.cli_home),
        )
        deadline = time.monotonic() + timeout_s
        while run.poll() is None and time.monotonic() < deadline:
            self.check_alive()
            time.sleep(1.0)
        assert run.poll() is not None, f"{name} did not finish within {timeout_s:.0f} s"
        assert run.returncode == 0, f"{name} exited with code {run.returncode}"
        run_dir = Path(config.output_dir)
        # `flwr run` exits 0 even when the ServerApp fails: the summary is the proof.
        assert (run_dir / "summary.json").exists(), f"{name}: the ServerApp wrote no summary"
        assert [row["round"] for row in rows(run_dir)] == list(range(1, config.num_rounds + 1))
        return run_dir

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def stop(self, failed: bool) -> None:
        self.procs.stop_all()
        if failed:
            print(self.procs.logs())


def _deployed_config(tiny_run_config, output_dir: Path, **overrides) -> RunConfig:
    return tiny_run_config(
        num_clients=2, sample_clients=2, eval_samples=4, output_dir=str(output_dir), **overrides
    )


# ---------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_secure_aggregation_on_a_real_superlink_equals_plain_fedavg(tiny_run_config, tmp_path):
    # One round each: a deployed SecAgg+ round starts a ClientApp process per client for each of
    # its four exchanges (minutes here); several rounds run in test_secure_aggregation.py.
    plain = _deployed_config(tiny_run_config, tmp_path / "plain", num_rounds=1)
    secure = _deployed_config(
        tiny_run_config, tmp_path / "secure", num_rounds=1, secure_aggregation=True
    )
    federation = Federation(tmp_path / "flower")
    started, failed = time.monotonic(), True
    try:
        federation.start_superlink()
        for partition in (0, 1):
            federation.start_supernode(f"node{partition}", partition, 2)
        plain_dir = federation.run("flwr-run-plain", plain)
        # Four exchanges, each starting a ClientApp process per node: 3x a plain round, more
        # on a loaded machine.
        secure_dir = federation.run("flwr-run-secure", secure, timeout_s=4 * RUN_TIMEOUT_S)
        failed = False
    finally:
        print(f"deployed plain and secure runs took {time.monotonic() - started:.1f} s")
        federation.stop(failed)

    expected = round_state(plain_dir, 1)
    tolerance = worst_case_tolerance(secure)
    error = largest_difference(round_state(secure_dir, 1), expected)
    print(f"largest difference {error:.3g}, bound {tolerance:.3g}")
    assert error <= tolerance, (error, tolerance)
    moved = largest_difference(expected, get_runtime(plain).initial_global_state)
    assert moved > 1000 * tolerance, (moved, tolerance)  # the round did change the routers
    plain_row, secure_rows = rows(plain_dir)[0], rows(secure_dir)
    assert len(set(secure_rows[0]["sampled_clients"])) == 2
    assert secure_rows[0]["train_loss"] == pytest.approx(plain_row["train_loss"], rel=1e-6)
    assert secure_rows[0]["bytes_up"] > 2 * plain_row["bytes_up"]  # masked integers + keys
    assert all(not row["dropped_clients"] for row in secure_rows)
    assert json.loads((secure_dir / "config.json").read_text())["secure_aggregation"] is True
    assert (secure_dir / "final" / "routers.safetensors").exists()


@pytest.mark.slow
def test_tls_and_supernode_authentication_refuse_an_unregistered_supernode(
    tiny_run_config, tmp_path
):
    work = tmp_path / "flower"
    work.mkdir()
    tls = write_tls_files(work / "certs")
    keys = {name: work / "keys" / name for name in ("node0", "node1", "stranger")}
    (work / "keys").mkdir()
    public = {name: write_node_key(path) for name, path in keys.items()}
    federation = Federation(work, tls)
    config = _deployed_config(tiny_run_config, tmp_path / "tls-run", num_rounds=1)
    started, failed = time.monotonic(), True
    try:
        federation.start_superlink("--enable-supernode-auth")
        registered_ids = set()
        for name in ("node0", "node1"):  # the operator registers the two nodes' public keys
            registered = federation.cli(
                "supernode", "register", str(public[name]), CONNECTION, "--format", "json"
            )
            assert registered.returncode == 0, registered.stdout + registered.stderr
            answer = json.loads(registered.stdout[registered.stdout.index("{") :])
            registered_ids.add(int(answer["node-id"]))
        for partition, name in enumerate(("node0", "node1")):
            federation.start_supernode(
                name, partition, 2, "--auth-supernode-private-key", str(keys[name])
            )
        # A key the SuperLink does not know, and no key at all: both are turned away.
        stranger = federation.start_supernode(
            "stranger", 0, 2, "--auth-supernode-private-key", str(keys["stranger"]),
            "--max-retries", "0", refused=True,
        )  # fmt: skip
        keyless = federation.start_supernode("keyless", 1, 2, "--max-retries", "0", refused=True)
        for proc in (stranger, keyless):
            proc.wait(timeout=120)
            assert proc.returncode != 0
        refusals = {
            "stranger": "[code: 2004] Failed to activate SuperNode.",
            "keyless": "[code: 2001] SuperNode authentication is enabled.",
        }
        for name, refusal in refusals.items():
            log = federation.log(name)
            assert "Exit Code: 305" in log and refusal in log, log[-3000:]

        run_dir = federation.run("flwr-run-tls", config)
        listed = federation.cli("supernode", "list", CONNECTION, "--format", "json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        failed = False
    finally:
        print(f"TLS + authentication test took {time.monotonic() - started:.1f} s")
        federation.stop(failed)

    # The two registered nodes trained, and are the only ones the SuperLink lists (online).
    row = rows(run_dir)[0]
    assert set(row["sampled_clients"]) == registered_ids and not row["dropped_clients"]
    nodes = json.loads(listed.stdout[listed.stdout.index("{") :])["nodes"]
    assert {int(node["node-id"]) for node in nodes} == registered_ids
    assert all(node["status"] == "online" for node in nodes)
    # The SuperLink served HTTPS, with the certificate made here.
    assert f"Uvicorn running on https://127.0.0.1:{federation.port}" in federation.log("superlink")
