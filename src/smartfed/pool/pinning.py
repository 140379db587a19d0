"""Pinned pool modules: the manifest records the sha256 of each local module's files.

A registered module is used only if its ``adapter_config.json`` and weights file still have the
digests its manifest records (``sha256``), so a module edited, re-trained or corrupted after it
was registered cannot silently change a run. :func:`check_pins` runs when a pool item is
resolved, which every command does before it loads the base model; it reads the files' bytes
only (a few MB per module), never the model.

Policy:
- a local module with pins is refused, in one line naming the file and both digests, when a
  pinned file changed or is missing, or when a weights file appeared that is not pinned;
- a local module without pins (a manifest written by hand, or before pools were pinned) is
  refused with the command that pins it: ``smartfed pool lock NAME``;
- a hub module (``hf://``) is not pinned: its files are fetched by PEFT, not read from a folder;
- a folder given as a path, not a registered name, has no manifest record and is not pinned.

``smartfed pool build`` pins what it writes; ``smartfed pool lock NAME`` re-pins a module after a
deliberate change (:func:`lock_entry`).
"""

from __future__ import annotations

from pathlib import Path

from smartfed.errors import PoolError
from smartfed.pool.registry import (
    ADAPTER_CONFIG,
    BUILTIN_MANIFEST,
    PINNABLE_FILES,
    PoolEntry,
    set_manifest_digests,
    user_manifest_path,
)
from smartfed.utils.hashing import file_sha256


def adapter_digests(folder: str | Path) -> dict[str, str]:
    """sha256 of the adapter files present in ``folder`` (config and weights), by file name."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise PoolError(f"{folder} has no {ADAPTER_CONFIG} (not a PEFT adapter folder)")
    return {
        name: file_sha256(folder / name) for name in PINNABLE_FILES if (folder / name).is_file()
    }


def lock_command(entry: PoolEntry) -> str:
    """The command that pins ``entry``, naming its manifest unless every registry reads it."""
    command = f"smartfed pool lock {entry.name}"
    default = {BUILTIN_MANIFEST.resolve(), user_manifest_path().resolve()}
    if entry.manifest and Path(entry.manifest).resolve() not in default:
        command += f" --pool_manifest {entry.manifest}"
    return command


def pin_problem(entry: PoolEntry) -> str | None:
    """Why ``entry``'s files do not match the digests its manifest pins (None: they match, or
    it is a hub source, which is not pinned)."""
    if entry.is_hub:
        return None
    folder = Path(entry.resolved_source())
    if not entry.sha256:
        return (
            f"pool module '{entry.name}' in {entry.manifest} is not pinned (its manifest entry "
            f"records no sha256 of its files); check the adapter, then pin it: "
            f"`{lock_command(entry)}`"
        )
    for name in PINNABLE_FILES:
        path = folder / name
        expected = entry.sha256.get(name)
        if expected is None:
            if path.is_file():
                return (
                    f"pool module '{entry.name}': {path} is not pinned in {entry.manifest} "
                    f"(pinned: {', '.join(sorted(entry.sha256))}); remove it, or run "
                    f"`{lock_command(entry)}` if it belongs there"
                )
            continue
        if not path.is_file():
            return (
                f"pool module '{entry.name}': pinned file {path} is missing (sha256 {expected} "
                f"in {entry.manifest})"
            )
        actual = file_sha256(path)
        if actual != expected:
            return (
                f"pool module '{entry.name}': {path} has changed since it was pinned: sha256 "
                f"{actual}, pinned {expected} in {entry.manifest}; restore the file, or run "
                f"`{lock_command(entry)}` if the change is deliberate"
            )
    return None


def check_pins(entry: PoolEntry) -> None:
    """Raise ``PoolError`` unless ``entry``'s files match the digests its manifest pins."""
    problem = pin_problem(entry)
    if problem:
        raise PoolError(problem)


def pin_status(entry: PoolEntry) -> str:
    """One phrase for ``smartfed pool show``."""
    if entry.is_hub:
        return "no (hub source)"
    problem = pin_problem(entry)
    if problem:
        return f"NO: {problem}"
    return "yes, matching: " + ", ".join(f"{n} {d[:12]}" for n, d in sorted(entry.sha256.items()))


def lock_entry(entry: PoolEntry) -> tuple[dict[str, str], dict[str, str]]:
    """Pin ``entry``'s current files in its manifest; returns (previous pins, new pins).

    The caller checks the adapter first (it must load as a LoRA and match its record)."""
    if entry.is_hub:
        raise PoolError(
            f"pool module '{entry.name}' is a hub source ({entry.source}); only local folders are "
            "pinned: download it and register the folder to pin it"
        )
    digests = adapter_digests(entry.resolved_source())
    set_manifest_digests(entry.manifest, entry.name, digests)
    previous, entry.sha256 = entry.sha256, digests
    return previous, digests
