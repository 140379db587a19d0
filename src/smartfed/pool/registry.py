"""The pool registry: short names (``cn_chat``, ``en_math``, ...) mapped to adapter sources.

A manifest is a JSON file::

    {"version": 1,
     "modules": {
        "en_math": {"source": "modules/en_math",   # folder (relative to manifest) or hf://org/id
                    "skill": "English math chain-of-thought",
                    "base_model": "smollm2-135m-instruct",
                    "target_modules": ["q_proj", "v_proj"],
                    "rank": 32, "alpha": 64,
                    "recipe": {...},                # how it was made (data, steps, loss, ...)
                    "sha256": {"adapter_config.json": "9f2c...",       # the pinned files
                               "adapter_model.safetensors": "04ab..."},
                    "revision": "3f1e..."}}}             # hub sources: the pinned commit

The package ships one manifest (``smartfed/pool/manifest.json``) for the seed's names. Users add
their own with ``--pool_manifest FILE`` or ``$SMARTFED_POOL_MANIFEST``; their entries override the
built-in ones of the same name. ``smartfed pool build`` registers what it builds in the user's
manifest (:func:`user_manifest_path`), which every registry reads.

``sha256`` pins a module's files (:mod:`smartfed.pool.pinning`): a module whose files no longer
match is refused before any model loads, and so is a local module with no pins at all
(``smartfed pool lock NAME`` pins it). A hub source (``hf://``) also pins ``revision``, the commit
its files were downloaded at; both are recorded at its first download.

This module only reads and writes manifests; it never imports the trainer
(:mod:`smartfed.pool.build`), which imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smartfed.errors import PoolError
from smartfed.utils.io import write_json_atomic

BUILTIN_MANIFEST = Path(__file__).with_name("manifest.json")
MANIFEST_ENV = "SMARTFED_POOL_MANIFEST"
HUB_PREFIX = "hf://"  # manifest sources starting with this are hub ids, others are paths
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PINNABLE_FILES = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS)  # the files PEFT reads from an adapter folder
_REQUIRED = {
    "source": str,
    "skill": str,
    "base_model": str,
    "target_modules": list,
    "rank": int,
    "alpha": (int, float),
}


@dataclass
class PoolEntry:
    name: str
    source: str
    skill: str
    base_model: str
    target_modules: list[str]
    rank: int
    alpha: float
    recipe: dict[str, Any] = field(default_factory=dict)
    manifest: str = ""
    sha256: dict[str, str] = field(default_factory=dict)  # file name in the folder -> digest
    revision: str = ""  # hub sources: the pinned commit hash ("" until first downloaded)

    @property
    def is_hub(self) -> bool:
        return self.source.startswith(HUB_PREFIX)

    def resolved_source(self) -> str:
        """Hub id (``hf://`` stripped) or local folder, relative paths taken from the manifest."""
        if self.is_hub:
            return self.source.removeprefix(HUB_PREFIX)
        path = Path(self.source).expanduser()
        if not path.is_absolute() and self.manifest:
            path = Path(self.manifest).parent / path
        return str(path)

    def is_available(self) -> bool:
        """A hub source may be available (PEFT will try); a local one must be a folder."""
        return self.is_hub or Path(self.resolved_source()).is_dir()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("name")
        data.pop("manifest")
        if not data["sha256"]:
            data.pop("sha256")
        if not data["revision"]:
            data.pop("revision")
        return data


def _parse_digests(path: Path, name: str, raw: Any) -> dict[str, str]:
    where = f"pool manifest {path}: modules.{name}.sha256"
    if not isinstance(raw, dict):
        raise PoolError(f"{where} must be an object mapping file names to sha256 digests")
    for file, digest in raw.items():
        if file not in PINNABLE_FILES:
            raise PoolError(f"{where} names '{file}'; only {', '.join(PINNABLE_FILES)} are pinned")
        if not (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
        ):
            raise PoolError(
                f"{where}.{file} must be a 64-digit lowercase hex sha256, got {digest!r}"
            )
    return dict(raw)


def is_commit_hash(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)
    )


def _parse_revision(path: Path, name: str, item: dict[str, Any]) -> str:
    if "revision" not in item:
        return ""
    where = f"pool manifest {path}: modules.{name}.revision"
    if not str(item["source"]).startswith(HUB_PREFIX):
        raise PoolError(f"{where} applies to hub sources (hf://...) only")
    if not is_commit_hash(item["revision"]):
        raise PoolError(
            f"{where} must be a 40-digit lowercase hex commit hash (a branch or tag would move), "
            f"got {item['revision']!r}"
        )
    return str(item["revision"])


def _parse_manifest(path: Path) -> dict[str, PoolEntry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PoolError(f"pool manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolError(f"cannot read pool manifest {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PoolError(f"pool manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("modules"), dict):
        raise PoolError(f"pool manifest {path}: expected an object with a 'modules' object")
    entries = {}
    for name, item in raw["modules"].items():
        if not isinstance(item, dict):
            raise PoolError(f"pool manifest {path}: modules.{name} must be an object")
        for key, kind in _REQUIRED.items():
            if key not in item:
                raise PoolError(f"pool manifest {path}: modules.{name} is missing field '{key}'")
            if not isinstance(item[key], kind) or isinstance(item[key], bool):
                expected = kind.__name__ if isinstance(kind, type) else "number"
                raise PoolError(
                    f"pool manifest {path}: modules.{name}.{key} must be a {expected}, "
                    f"got {item[key]!r}"
                )
        if item["rank"] < 1:
            raise PoolError(f"pool manifest {path}: modules.{name}.rank must be >= 1")
        recipe = item.get("recipe", {})
        if not isinstance(recipe, dict):
            raise PoolError(f"pool manifest {path}: modules.{name}.recipe must be an object")
        entries[name] = PoolEntry(
            name=name,
            source=item["source"],
            skill=item["skill"],
            base_model=item["base_model"],
            target_modules=list(item["target_modules"]),
            rank=item["rank"],
            alpha=float(item["alpha"]),
            recipe=recipe,
            manifest=str(path),
            sha256=_parse_digests(path, name, item.get("sha256", {})),
            revision=_parse_revision(path, name, item),
        )
    return entries


def user_manifest_path() -> Path:
    """The user's own manifest, read by every registry: ``$SMARTFED_CACHE/pool/manifest.json``."""
    from smartfed.models.loading import cache_root

    return cache_root() / "pool" / "manifest.json"


class PoolRegistry:
    """Short pool names → ``PoolEntry``, merged from the built-in and user manifests."""

    def __init__(self, manifests: list[Path]):
        self.manifests = manifests
        self.entries: dict[str, PoolEntry] = {}
        for manifest in manifests:
            self.entries.update(_parse_manifest(manifest))

    @classmethod
    def default(cls, extra_manifest: str | Path | None = None) -> PoolRegistry:
        """Built-in manifest, then the user's (``smartfed pool build`` default), then env, flag."""
        manifests = [BUILTIN_MANIFEST]
        if user_manifest_path().is_file():
            manifests.append(user_manifest_path())
        env = os.environ.get(MANIFEST_ENV)
        if env:
            manifests.append(Path(env).expanduser())
        if extra_manifest:
            manifests.append(Path(extra_manifest).expanduser())
        return cls(manifests)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> PoolEntry:
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise PoolError(
                f"unknown pool module '{name}': known names are {known} (from "
                f"{', '.join(str(m) for m in self.manifests)}); or pass a PEFT adapter folder"
            ) from None


def add_manifest_entry(manifest: str | Path, entry: PoolEntry) -> None:
    """Insert or replace ``entry`` in ``manifest`` (created if missing), written atomically."""
    path = Path(manifest)
    data: dict[str, Any] = {"version": 1, "modules": {}}
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("modules", {})
    data["modules"][entry.name] = entry.to_json()
    write_json_atomic(path, data)


def set_manifest_digests(
    manifest: str | Path, name: str, digests: dict[str, str], revision: str | None = None
) -> None:
    """Replace the ``sha256`` pins (and for a hub source its ``revision``) of module ``name`` in
    ``manifest``, written atomically; every other field and module is kept as it is."""
    path = Path(manifest)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["modules"][name]["sha256"] = dict(sorted(digests.items()))
    if revision is not None:
        data["modules"][name]["revision"] = revision
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        raise PoolError(f"cannot write pool manifest {path}: {exc.strerror or exc}") from None
