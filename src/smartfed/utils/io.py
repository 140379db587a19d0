"""Atomic file writes: a crash never leaves a half-written file where a whole one is expected.

A write is durable once it returns: the new file (or every file of a new folder) is fsync'd
before the rename, and the folder holding it after. A write the storage refuses (no space,
no permission, read-only file system) raises :class:`~smartfed.errors.StorageError`, one line
naming the file; the old file, if any, is left as it was. Reads of files another tool wrote
(:func:`read_json`, :func:`read_jsonl`) raise :class:`~smartfed.errors.DamagedFileError`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smartfed.errors import DamagedFileError, StorageError

# What the user can do about each refusal of the storage.
_STORAGE_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EACCES: "make it writable",
    errno.EPERM: "make it writable",
    errno.EROFS: "the file system is read-only: remount it read-write or move the folder",
}


def storage_error(exc: BaseException, path: str | os.PathLike[str]) -> StorageError | None:
    """``exc`` as a one-line :class:`StorageError` naming ``path``, when the storage refused
    the write (no space, no permission, read-only); None for any other failure."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        # safetensors (Rust) reports an I/O failure as "... Os { code: 28, ... }".
        found = re.search(r"Os \{ code: (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    if code not in _STORAGE_HINTS:
        return None
    return StorageError(f"cannot write {path}: {os.strerror(code)}; {_STORAGE_HINTS[code]}")


@contextmanager
def storage_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn the storage's refusals inside the block into :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from None


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file, or a folder's entries, to the storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    """
    target = Path(path)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with storage_errors(target):
            # mkstemp makes it private; the result is an ordinary file
            tmp_path.chmod(0o666 & ~_umask())
            yield tmp_path
            fsync_path(tmp_path)
            os.replace(tmp_path, target)
            fsync_path(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_dir_atomic(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Create directory ``path`` by filling a temporary sibling and renaming it into place.

    If ``path`` already exists it is replaced only after the new content is complete.
    """
    target = Path(path)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with storage_errors(target):
            tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
            fill(tmp)
            for folder, _, files in os.walk(tmp):
                for name in files:
                    fsync_path(Path(folder) / name)
                fsync_path(folder)
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_path(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_json(path: str | os.PathLike[str], *, expect: type = dict) -> Any:
    """The JSON in ``path``, of type ``expect``; a missing, unreadable or damaged file raises
    a one-line :class:`DamagedFileError` naming it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFileError(f"{path} is missing") from None
    except OSError as exc:
        raise DamagedFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(f"{path} is damaged (not valid JSON: {exc})") from None
    if not isinstance(value, expect):
        raise DamagedFileError(
            f"{path} is damaged (a JSON {type(value).__name__}, expected {expect.__name__})"
        )
    return value


def read_jsonl(path: str | os.PathLike[str], *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line (blank lines skipped); a missing, unreadable or
    damaged file (or line) raises a one-line :class:`DamagedFileError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise DamagedFileError(f"{path} is missing") from None
    except OSError as exc:
        raise DamagedFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DamagedFileError(f"{path} is damaged (not UTF-8 text: {exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DamagedFileError(f"{path}:{number} is damaged (bad JSON: {exc})") from None
        if not isinstance(row, dict):
            raise DamagedFileError(f"{path}:{number} is damaged (not a JSON object)")
        rows.append(row)
    return rows
