"""Hub pool modules are pinned: the first download records the commit and the sha256 of the
files in the manifest; a changed file, or a pinned commit that can no longer be had, is refused
before the model loads.

Offline: a local folder laid out like the Hugging Face cache (``models--owner--name/refs/main``,
``snapshots/<commit>/<files>``) stands in for the hub, read by ``huggingface_hub`` itself with
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants
from transformers import AutoModelForCausalLM

import smartfed.assembly.runtime as runtime_module
import smartfed.models as models_package
import smartfed.models.loading as loading_module
from smartfed.cli.main import main
from smartfed.errors import PoolError
from smartfed.pool import PoolRegistry, load_pool, resolve_pool_item
from smartfed.utils.hashing import file_sha256

REPO = "someone/tiny-lora"
WEIGHTS = "adapter_model.safetensors"


def _commit(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


class HubMirror:
    """A Hugging Face cache holding one adapter repository."""

    def __init__(self, root: Path):
        self.repo = root / f"models--{REPO.replace('/', '--')}"

    def publish(self, adapter: Path, label: str) -> str:
        """A new commit of the adapter's files, which ``main`` now points at."""
        commit = _commit(label)
        snapshot = self.snapshot(commit)
        snapshot.mkdir(parents=True)
        for name in ("adapter_config.json", WEIGHTS):
            shutil.copy(adapter / name, snapshot / name)
        (self.repo / "refs").mkdir(parents=True, exist_ok=True)
        (self.repo / "refs" / "main").write_text(commit)
        return commit

    def snapshot(self, commit: str) -> Path:
        return self.repo / "snapshots" / commit


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubMirror:
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return HubMirror(cache)


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = tmp_path / "pool.json"
    entry = {
        "source": f"hf://{REPO}",
        "skill": "test",
        "base_model": "tiny",
        "target_modules": ["q_proj", "v_proj"],
        "rank": 4,
        "alpha": 8,
    }
    path.write_text(json.dumps({"version": 1, "modules": {"theirs": entry}}))
    return path


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a base model fails the test: a changed pool module must be refused first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the base model was loaded before the pool's pins were checked")

    for owner in (runtime_module, models_package, loading_module):
        monkeypatch.setattr(owner, "load_base_model", refuse)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def _record(manifest: Path) -> dict:
    return json.loads(manifest.read_text())["modules"]["theirs"]


def _run(capsys, manifest: Path, tiny_model_dir, tiny_task, tmp_path) -> str:
    capsys.readouterr()
    code = main(["run", "--model_name_or_path", str(tiny_model_dir), "--task", tiny_task,
                 "--lora_pool", "theirs", "--pool_manifest", str(manifest), "--num_clients", "2",
                 "--output_dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("smartfed: error: ") and "Traceback" not in err
    return lines[0]


def test_first_download_pins_the_revision_and_the_files(hub, manifest, make_adapter, caplog):
    commit = hub.publish(make_adapter("hubmod"), "v1")
    with caplog.at_level("WARNING", logger="smartfed.pool.pinning"):
        name, source, _ = resolve_pool_item("theirs", PoolRegistry([manifest]))
    assert (name, Path(source)) == ("theirs", hub.snapshot(commit))
    record = _record(manifest)
    assert record["revision"] == commit
    assert record["sha256"] == {
        "adapter_config.json": file_sha256(hub.snapshot(commit) / "adapter_config.json"),
        WEIGHTS: file_sha256(hub.snapshot(commit) / WEIGHTS),
    }
    assert record["skill"] == "test"  # the rest of the record is kept
    assert [r.getMessage() for r in caplog.records] == [
        f"pool module 'theirs': first download of {REPO} pinned at revision {commit} "
        f"(sha256 of adapter_config.json, {WEIGHTS}) in {manifest}"
    ]
    # Pinned now: the next use checks, and a newer main does not replace the pinned commit.
    hub.publish(make_adapter("newer", seed=7), "v2")
    pool = load_pool(["theirs"], PoolRegistry([manifest]))
    assert pool.names == ["theirs"] and _record(manifest)["revision"] == commit


def test_a_changed_file_of_a_pinned_hub_module_is_refused_before_the_model_loads(
    hub, manifest, make_adapter, capsys, tmp_path, tiny_model_dir, tiny_task, no_model_loads
):
    commit = hub.publish(make_adapter("hubmod"), "v1")
    resolve_pool_item("theirs", PoolRegistry([manifest]))  # first download: pinned
    weights = hub.snapshot(commit) / WEIGHTS
    pinned = file_sha256(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # tensor data: the file still loads, only the pin can tell
    weights.write_bytes(bytes(data))
    line = _run(capsys, manifest, tiny_model_dir, tiny_task, tmp_path)
    assert str(weights) in line and "has changed since it was pinned" in line
    assert pinned in line and file_sha256(weights) in line
    assert f"smartfed pool lock theirs --pool_manifest {manifest}" in line


def test_a_moved_revision_is_refused_until_locked_again(
    hub, manifest, make_adapter, capsys, tmp_path, tiny_model_dir, tiny_task, no_model_loads
):
    first = hub.publish(make_adapter("hubmod"), "v1")
    resolve_pool_item("theirs", PoolRegistry([manifest]))
    # The repository's history is rewritten: main moves, the pinned commit is gone.
    second = hub.publish(make_adapter("rewritten", seed=9), "v2")
    shutil.rmtree(hub.snapshot(first))
    line = _run(capsys, manifest, tiny_model_dir, tiny_task, tmp_path)
    assert f"pinned revision {first} of hub repository {REPO} is not available" in line
    assert str(manifest) in line and "smartfed pool lock theirs" in line

    # After checking it, the owner pins the new revision on purpose.
    capsys.readouterr()
    assert main(["pool", "lock", "theirs", "--pool_manifest", str(manifest)]) == 0
    assert "re-pinned theirs" in capsys.readouterr().out
    assert _record(manifest)["revision"] == second
    _, source, _ = resolve_pool_item("theirs", PoolRegistry([manifest]))
    assert Path(source) == hub.snapshot(second)


def test_a_revision_must_be_a_commit_hash_of_a_hub_source(manifest):
    data = json.loads(manifest.read_text())
    data["modules"]["theirs"]["revision"] = "main"
    manifest.write_text(json.dumps(data))
    with pytest.raises(PoolError, match=r"modules\.theirs\.revision must be a 40-digit"):
        PoolRegistry([manifest])
    data["modules"]["theirs"].update(source="adapters/x", revision=_commit("v1"))
    manifest.write_text(json.dumps(data))
    with pytest.raises(PoolError, match="applies to hub sources"):
        PoolRegistry([manifest])
