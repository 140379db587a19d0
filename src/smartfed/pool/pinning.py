"""Pinned pool modules: the manifest records the sha256 of each module's files.

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
- a hub module (``hf://``) also pins ``revision``, the commit of its files. Its first download
  (of ``main``) records both in its manifest, with a log line (:func:`verified_source`); later
  uses fetch exactly the pinned commit and are refused, in one line, when that commit cannot be
  had (the repository's history moved) or a file of it differs from its pin (the cached copy was
  changed);
- a folder given as a path, not a registered name, has no manifest record and is not pinned.

``smartfed pool build`` pins what it writes; ``smartfed pool lock NAME`` re-pins a module after a
deliberate change (:func:`lock_entry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from smartfed.errors import PoolError
from smartfed.pool.hub import fetch_hub_module
from smartfed.pool.registry import (
    ADAPTER_CONFIG,
    BUILTIN_MANIFEST,
    PINNABLE_FILES,
    PoolEntry,
    set_manifest_digests,
    user_manifest_path,
)
from smartfed.utils.hashing import file_sha256

log = logging.getLogger(__name__)


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


def pin_problem(entry: PoolEntry, folder: str | Path | None = None) -> str | None:
    """Why ``entry``'s files do not match the digests its manifest pins (None: they match).
    ``folder`` holds the files (default: the local source; a hub module's pinned snapshot,
    fetched here when not given)."""
    if not entry.sha256 or (entry.is_hub and not entry.revision):
        return (
            f"pool module '{entry.name}' in {entry.manifest} is not pinned (its manifest entry "
            f"records no {'revision and ' if entry.is_hub else ''}sha256 of its files); check "
            f"the adapter, then pin it: `{lock_command(entry)}`"
        )
    if folder is None:
        if entry.is_hub:
            try:
                folder, _ = fetch_hub_module(entry, entry.revision)
            except PoolError as exc:
                return (
                    f"{exc}; its history may have moved: check the current revision, then pin "
                    f"it with `{lock_command(entry)}`"
                )
        else:
            folder = entry.resolved_source()
    folder = Path(folder)
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


def check_pins(entry: PoolEntry, folder: str | Path | None = None) -> None:
    """Raise ``PoolError`` unless ``entry``'s files match the digests its manifest pins."""
    problem = pin_problem(entry, folder)
    if problem:
        raise PoolError(problem)


def verified_source(entry: PoolEntry) -> str:
    """The folder to load ``entry`` from, once its files are checked against its pins.

    A hub module with no pins yet is downloaded at ``main`` and pinned there: its commit and
    the sha256 of its files go into its manifest (trust on first download, logged). A pinned
    one is fetched at its pinned commit, then checked like a local folder."""
    if not entry.is_hub:
        check_pins(entry)
        return entry.resolved_source()
    if entry.revision and entry.sha256:
        try:
            folder, _ = fetch_hub_module(entry, entry.revision)
        except PoolError as exc:
            raise PoolError(
                f"{exc}; its history may have moved: check the current revision, then pin it "
                f"with `{lock_command(entry)}`"
            ) from None
        check_pins(entry, folder)
        return str(folder)
    folder, commit = fetch_hub_module(entry, None)
    digests = adapter_digests(folder)
    set_manifest_digests(entry.manifest, entry.name, digests, revision=commit)
    entry.sha256, entry.revision = digests, commit
    log.warning(
        "pool module '%s': first download of %s pinned at revision %s (sha256 of %s) in %s",
        entry.name, entry.resolved_source(), commit, ", ".join(sorted(digests)), entry.manifest,
    )  # fmt: skip
    return str(folder)


def pin_status(entry: PoolEntry) -> str:
    """One phrase for ``smartfed pool show``."""
    problem = pin_problem(entry)
    if problem:
        return f"NO: {problem}"
    at = f"revision {entry.revision[:12]}, " if entry.is_hub else ""
    return f"yes, {at}matching: " + ", ".join(
        f"{n} {d[:12]}" for n, d in sorted(entry.sha256.items())
    )


def lock_entry(entry: PoolEntry) -> tuple[dict[str, str], dict[str, str]]:
    """Pin ``entry``'s current files in its manifest; returns (previous pins, new pins).

    The caller checks the adapter first (it must load as a LoRA and match its record). A hub
    module is pinned at the current commit of its ``main``, which the previous pins include."""
    if entry.is_hub:
        folder, commit = fetch_hub_module(entry, None)
        digests = adapter_digests(folder)
        set_manifest_digests(entry.manifest, entry.name, digests, revision=commit)
        previous = {**entry.sha256, "revision": entry.revision} if entry.revision else {}
        entry.sha256, entry.revision = digests, commit
        return previous, {**digests, "revision": commit}
    digests = adapter_digests(entry.resolved_source())
    set_manifest_digests(entry.manifest, entry.name, digests)
    previous, entry.sha256 = entry.sha256, digests
    return previous, digests
