"""The pool registry reads manifests without depending on the trainer that writes them."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from smartfed.errors import PoolError
from smartfed.pool import build, registry
from smartfed.pool.registry import PoolEntry, PoolRegistry, add_manifest_entry, user_manifest_path


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, inside functions and TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_registry_never_imports_the_builder():
    imported = _imported_modules(Path(registry.__file__))
    assert not {name for name in imported if name.startswith("smartfed.pool.build")}
    assert build.user_manifest_path is user_manifest_path  # one definition, in the registry


def _entry(name: str, source: str) -> PoolEntry:
    return PoolEntry(
        name=name,
        source=source,
        skill="test",
        base_model="tiny",
        target_modules=["q_proj"],
        rank=2,
        alpha=4.0,
    )


def test_the_users_manifest_is_read_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(registry.MANIFEST_ENV, raising=False)
    path = user_manifest_path()
    assert path == tmp_path / "cache" / "pool" / "manifest.json"
    assert PoolRegistry.default().manifests == [registry.BUILTIN_MANIFEST]  # none yet
    add_manifest_entry(path, _entry("mine", "modules/mine"))
    reg = PoolRegistry.default()
    assert reg.manifests == [registry.BUILTIN_MANIFEST, path]
    assert reg.get("mine").resolved_source() == str(path.parent / "modules" / "mine")


def test_later_manifests_override_earlier_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("SMARTFED_CACHE", str(tmp_path / "cache"))
    env, flag = tmp_path / "env.json", tmp_path / "flag.json"
    add_manifest_entry(user_manifest_path(), _entry("x", "from-user"))
    add_manifest_entry(env, _entry("x", "from-env"))
    add_manifest_entry(flag, _entry("x", "from-flag"))
    monkeypatch.setenv(registry.MANIFEST_ENV, str(env))
    assert PoolRegistry.default().get("x").source == "from-env"
    assert PoolRegistry.default(flag).get("x").source == "from-flag"
    assert json.loads(flag.read_text())["modules"]["x"]["source"] == "from-flag"


def test_an_unknown_name_lists_the_known_ones(tmp_path):
    manifest = tmp_path / "m.json"
    add_manifest_entry(manifest, _entry("a", "a"))
    with pytest.raises(PoolError, match="unknown pool module 'b': known names are a"):
        PoolRegistry([manifest]).get("b")
