"""Dataset registry: short names (``gsm8k``, ...) mapped to local files and a record reader.

A dataset is registered by decorating a *reader*, a function that turns one file of one split
into :class:`~smartfed.data.examples.Example` objects::

    @register_dataset("gsm8k", splits={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
                      label_field="answer_bucket")
    def read_gsm8k(path: Path, split: str) -> Iterator[Example]: ...

Split files are paths relative to a *data dir* laid out like ``/work/shared/data`` (one folder per
dataset). :func:`load_examples` looks for a registered dataset's file, in this order:

1. the ``data_dir`` argument (the CLI's ``--data_dir``);
2. the ``SMARTFED_DATA_DIR`` environment variable;
3. the small subset bundled in the package (``smartfed/data/bundled/``);

and raises a one-line :class:`~smartfed.errors.ConfigError` naming every place it looked when none
has the file. A data dir that is given but does not exist is an error (a typo should not silently
fall back to the bundled subset); one that exists but lacks this dataset is skipped with a logged
warning, so one data dir may hold only some datasets.

Anything that is not a registered name is taken as the path of the user's own JSONL file, read
by :func:`load_jsonl` with a field mapping (``{split}`` in the path is replaced by the split).
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartfed.data.examples import Example
from smartfed.errors import ConfigError

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SMARTFED_DATA_DIR"
BUNDLED_DIR = Path(__file__).with_name("bundled")

Reader = Callable[[Path, str], Iterable[Example]]


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one registered dataset."""

    name: str
    splits: Mapping[str, str]  # split name -> file path relative to a data dir
    reader: Reader  # (file path, split name) -> examples
    description: str = ""
    # Default discrete meta field for Dirichlet / natural partitioning (None: the dataset has none).
    label_field: str | None = None
    # Hugging Face hub id for loading by name when online. TODO(hub): not used yet; this project
    # runs offline, so resolution never touches the network (see resolve_split_file).
    hub_id: str | None = None
    meta_fields: tuple[str, ...] = field(default_factory=tuple)  # documented keys of Example.meta
    # Appended to the "not found" error, e.g. where to get a dataset that is not shipped offline.
    missing_hint: str = ""


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    splits: Mapping[str, str],
    description: str = "",
    label_field: str | None = None,
    hub_id: str | None = None,
    meta_fields: Sequence[str] = (),
    missing_hint: str = "",
) -> Callable[[Reader], Reader]:
    """Decorator registering ``reader`` under ``name``; returns the reader unchanged."""

    def decorator(reader: Reader) -> Reader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        if not splits:
            raise ValueError(f"dataset {name!r} needs at least one split")
        DATASETS[name] = DatasetSpec(
            name=name,
            splits=dict(splits),
            reader=reader,
            description=description,
            label_field=label_field,
            hub_id=hub_id,
            meta_fields=tuple(meta_fields),
            missing_hint=missing_hint,
        )
        return reader

    return decorator


def _ensure_builtin() -> None:
    # The built-in datasets register themselves on import; imported lazily to avoid a cycle.
    import smartfed.data.sets  # noqa: F401


def available_datasets() -> list[str]:
    _ensure_builtin()
    return sorted(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    _ensure_builtin()
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(DATASETS))} "
            "(or give the path of a .jsonl file)"
        ) from None


@dataclass(frozen=True)
class ResolvedFile:
    path: Path
    origin: str  # "data_dir", "env" or "bundled"


def resolve_split_file(
    name: str, split: str, *, data_dir: str | os.PathLike[str] | None = None
) -> ResolvedFile:
    """Find the file of ``split`` of registered dataset ``name`` (see the module docstring)."""
    spec = get_dataset(name)
    if split not in spec.splits:
        raise ConfigError(
            f"dataset {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}"
        )
    relative = spec.splits[split]
    roots: list[tuple[str, str, Path]] = []
    if data_dir is not None and str(data_dir) != "":
        roots.append(("data_dir", "--data_dir", Path(data_dir).expanduser()))
    env_dir = os.environ.get(DATA_DIR_ENV, "")
    if env_dir:
        roots.append(("env", f"${DATA_DIR_ENV}", Path(env_dir).expanduser()))
    for _, label, root in roots:
        if not root.is_dir():
            raise ConfigError(f"{label} {root} is not a directory")
    roots.append(("bundled", "bundled subset", BUNDLED_DIR))

    skipped: list[str] = []
    for origin, label, root in roots:
        path = root / relative
        if path.is_file():
            if skipped:
                logger.warning(
                    "dataset %s split %s: %s not found in %s; using %s",
                    name,
                    split,
                    relative,
                    "; ".join(skipped),
                    path,
                )
            if origin == "bundled":
                logger.info("dataset %s split %s: using the bundled subset %s", name, split, path)
            return ResolvedFile(path=path, origin=origin)
        skipped.append(f"{label} {root}")
    # TODO(hub): when online and spec.hub_id is set, load it with `datasets.load_dataset` here.
    hint = f"; {spec.missing_hint}" if spec.missing_hint else ""
    raise ConfigError(
        f"dataset {name!r} split {split!r}: {relative} not found in {'; '.join(skipped)}; "
        f"pass --data_dir (or set ${DATA_DIR_ENV}) to a folder containing {relative}{hint}"
    )


def load_examples(
    name_or_path: str | os.PathLike[str],
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    prompt_field: str = "prompt",
    response_field: str = "response",
    meta_fields: Sequence[str] = (),
) -> list[Example]:
    """Examples of a registered dataset's split, or of a user JSONL file.

    A registered name always wins over a file of the same name. For a path, ``{split}`` in it is
    replaced by ``split`` and the ``*_field`` arguments map the file's keys (see
    :func:`load_jsonl`); for a registered dataset they are ignored. ``limit`` keeps the first
    ``limit`` examples in file order.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    key = os.fspath(name_or_path)
    _ensure_builtin()
    if key in DATASETS:
        resolved = resolve_split_file(key, split, data_dir=data_dir)
        examples = list(itertools.islice(DATASETS[key].reader(resolved.path, split), limit))
        if not examples and limit != 0:
            raise ConfigError(f"{resolved.path}: no examples")
        return examples
    if not _looks_like_path(key):
        get_dataset(key)  # raises the "unknown dataset" error
    path = Path(key.replace("{split}", split)).expanduser()
    return load_jsonl(path, prompt_field, response_field, meta_fields, limit=limit)


def _looks_like_path(key: str) -> bool:
    return os.sep in key or "/" in key or key.endswith((".jsonl", ".json")) or Path(key).exists()


# --------------------------------------------------------------------------------------------
# JSONL reading with one-line errors


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)`` for each non-blank line; errors name file and line.

    A ``.gz`` file is read through gzip.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from _jsonl_records(path, handle)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: not a readable file ({exc})") from None


def _jsonl_records(path: Path, handle: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_no, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{line_no}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(record, dict):
            raise ConfigError(
                f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
            )
        yield line_no, record


def require_field(
    record: Mapping[str, Any],
    name: str,
    path: str | os.PathLike[str],
    line_no: int | None,
    *,
    kind: type | tuple[type, ...] | None = None,
) -> Any:
    """``record[name]``, or a one-line ConfigError naming file, line and field.

    ``line_no`` None means ``path`` already names the location (e.g. "file.json: record 3").
    """
    where = str(path) if line_no is None else f"{path}:{line_no}"
    if name not in record:
        present = ", ".join(record) or "none"
        raise ConfigError(f"{where}: missing field {name!r} (fields present: {present})")
    value = record[name]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def load_jsonl(
    path: str | os.PathLike[str],
    prompt_field: str,
    response_field: str,
    meta_fields: Sequence[str] = (),
    *,
    limit: int | None = None,
) -> list[Example]:
    """Read a user JSONL file: ``prompt_field`` and ``response_field`` must be strings; every
    name in ``meta_fields`` is copied into ``Example.meta``. Blank lines are skipped."""
    if isinstance(meta_fields, str):
        meta_fields = (meta_fields,)
    examples: list[Example] = []
    if limit == 0:
        return examples
    for line_no, record in iter_jsonl(path):
        prompt = require_field(record, prompt_field, path, line_no, kind=str)
        response = require_field(record, response_field, path, line_no, kind=str)
        meta = {name: require_field(record, name, path, line_no) for name in meta_fields}
        examples.append(Example(prompt=prompt, response=response, meta=meta))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ConfigError(f"{path}: no examples (the file is empty)")
    return examples
