"""File digests: the sha256 that pins a file's exact bytes."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20  # read in 1 MiB pieces: a large weights file never sits in memory whole


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
