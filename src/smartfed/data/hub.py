"""Loading a registered dataset from the Hugging Face hub with ``datasets.load_dataset``.

A dataset registered with a :class:`HubSource` can be read from its hub repository when no local
file has it (see :func:`smartfed.data.registry.load_examples` for the order). The source names the
repository, which hub split (or which data file of the repository) holds each of the dataset's
splits, and how hub columns map onto the fields its record reader expects; the reader is the same
function that reads the local files, so hub rows and file records become identical examples.

Where the rows come from:

* ``$SMARTFED_HUB_MIRROR/<owner>/<name>`` when that folder exists: a local copy of the hub
  repository (``git clone https://huggingface.co/datasets/<owner>/<name>``), read offline by
  ``datasets.load_dataset`` exactly as the hub copy would be;
* otherwise the hub id itself: the Hugging Face cache, downloading when online. With
  ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) only the cache is read.

Without either offline variable, a machine with no network would spend about 25 s in
``huggingface_hub``'s retries before failing, on every load; so the hub's host is first probed
with one short TCP connection (once per process; skipped when a proxy is configured) and an
unreachable hub is reported at once instead.

Every failure (``datasets`` not installed, hub unreachable, repository or file missing, a
configuration that does not exist) is raised as :class:`HubUnavailable` with a one-line reason;
the registry then falls back to the bundled subset or raises its own one-line error. Rows that do
not have the fields the reader expects are not a "hub unavailable" case: the reader's
:class:`~smartfed.errors.ConfigError` (naming the repository, split and row) propagates.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from smartfed.data.examples import Example

HUB_MIRROR_ENV = "SMARTFED_HUB_MIRROR"
HUB_PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

# (location, record) pairs of one split -> examples. The location names the file and line, or the
# hub repository, split and row, for error messages.
RecordReader = Callable[[Iterable[tuple[str, Mapping[str, Any]]], str], Iterable[Example]]


class HubUnavailable(Exception):
    """The hub copy of a dataset cannot be read; ``str()`` is a one-line reason."""


@dataclass(frozen=True)
class HubSource:
    """Where a registered dataset lives on the hub and how its rows become examples.

    Each of the dataset's splits is either a hub split of ``config`` (``splits``: an expression
    such as ``"test"`` or ``"validation+train"``) or one data file of the repository (``files``:
    a path inside the repository, loaded as a single split with the ``datasets`` builder that
    fits its extension).
    """

    repo_id: str
    read: RecordReader
    splits: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    config: str | None = None
    # hub column -> field name the reader expects; when given, only these columns are kept.
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.splits) & set(self.files)
        if both:
            raise ValueError(f"{self.repo_id}: split(s) {sorted(both)} given as hub split and file")

    def covers(self, split: str) -> bool:
        return split in self.splits or split in self.files

    def describe(self, split: str) -> str:
        """E.g. ``openai/gsm8k (config main, split test)`` or ``owner/name (file x.jsonl)``."""
        if split in self.files:
            return f"{self.repo_id} (file {self.files[split]})"
        config = f"config {self.config}, " if self.config else ""
        return f"{self.repo_id} ({config}split {self.splits[split]})"

    def load_arguments(self, split: str) -> dict[str, Any]:
        """Keyword arguments of ``datasets.load_dataset`` (besides the path) for ``split``."""
        if split in self.files:
            return {"data_files": {"train": self.files[split]}, "split": "train"}
        arguments: dict[str, Any] = {"split": self.splits[split]}
        if self.config is not None:
            arguments["name"] = self.config
        return arguments


def hub_records(source: HubSource, split: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(location, record)`` pairs of ``split``'s rows, columns renamed per ``source.columns``.

    Raises :class:`HubUnavailable` (before yielding anything) when the rows cannot be loaded.
    """
    rows = _load_rows(source, split)
    label = source.describe(split)
    return _renamed(rows, source.columns, label)


def _renamed(
    rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str], label: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for index, row in enumerate(rows):
        if columns:
            record = {target: row[column] for column, target in columns.items() if column in row}
        else:
            record = dict(row)
        yield f"{label} row {index}", record


def _load_rows(source: HubSource, split: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise HubUnavailable("the 'datasets' package is not installed") from None
    path = source.repo_id
    mirror = os.environ.get(HUB_MIRROR_ENV, "")
    if mirror and (Path(mirror).expanduser() / source.repo_id).is_dir():
        path = str(Path(mirror).expanduser() / source.repo_id)
    elif not datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable()
        if reason:
            raise HubUnavailable(reason)
    try:
        return datasets.load_dataset(path, **source.load_arguments(split))
    except Exception as exc:  # datasets raises many types; any of them means "unavailable"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HubUnavailable(f"{type(exc).__name__}: {detail}".rstrip(": ")) from None


@functools.cache
def hub_unreachable() -> str | None:
    """None when the hub's host accepts a TCP connection (or a proxy is set), else why not."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return (
            f"the Hugging Face hub ({host}) is not reachable ({type(exc).__name__}); "
            "set HF_HUB_OFFLINE=1 to read the local Hugging Face cache"
        )
    return None
