"""Hub pool modules (``hf://owner/name``): their adapter files fetched through ``huggingface_hub``.

Only the files PEFT reads from an adapter folder are fetched (``adapter_config.json`` and the
weights), into the Hugging Face cache (``$HF_HUB_CACHE``). A folder laid out like that cache
(``models--owner--name/refs/main`` and ``snapshots/<commit>/...``) works offline as a local
mirror: with ``HF_HUB_OFFLINE=1`` only the cache is read. The snapshot folder is named after the
commit its files come from, which is the revision a manifest pins
(:mod:`smartfed.pool.pinning`).
"""

from __future__ import annotations

import os
from pathlib import Path

from smartfed.errors import PoolError
from smartfed.pool.registry import PINNABLE_FILES, PoolEntry, is_commit_hash


def hub_offline() -> bool:
    """Whether only the local Hugging Face cache may be read (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or value in {"1", "true", "yes", "on"}


def fetch_hub_module(entry: PoolEntry, revision: str | None) -> tuple[Path, str]:
    """The local folder holding ``entry``'s adapter files at ``revision`` (a commit hash; None:
    the repository's ``main``), and the commit it holds. One-line ``PoolError`` when they
    cannot be had (unknown repository, a revision that no longer exists, offline and not
    cached)."""
    from huggingface_hub import snapshot_download

    repo_id = entry.resolved_source()
    wanted = revision or "main"
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=wanted,
                allow_patterns=list(PINNABLE_FILES),
                local_files_only=hub_offline(),
            )
        )
    except Exception as exc:  # huggingface_hub raises many types; each means "not available"
        text = str(exc).strip()
        detail = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        pinned = f"pinned revision {wanted}" if revision else "revision main"
        raise PoolError(
            f"pool module '{entry.name}' ({entry.manifest}): {pinned} of hub repository "
            f"{repo_id} is not available ({detail})"
        ) from None
    # A snapshot folder is named after its commit (huggingface_hub's cache layout).
    commit = folder.name if is_commit_hash(folder.name) else ""
    if not commit:
        raise PoolError(
            f"pool module '{entry.name}': {folder} is not a hub snapshot folder named by its "
            "commit, so its revision cannot be pinned"
        )
    return folder, commit
