"""Dataset registry: short names (``gsm8k``, ...) mapped to local files, a hub copy and a reader.

A dataset is registered by decorating a *reader*, a function that turns one file of one split
into :class:`~smartfed.data.examples.Example` objects::

    @register_dataset("gsm8k", splits={"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
                      label_field="answer_bucket", hub=HubSource("openai/gsm8k", ...))
    def read_gsm8k(path: Path, split: str) -> Iterator[Example]: ...

Split files are paths relative to a *data dir* laid out like the project's shared data folder (one
folder per dataset). :func:`load_examples` takes a registered dataset's split from the first of:

1. the file in the ``data_dir`` argument (the CLI's ``--data_dir``);
2. the file in the ``SMARTFED_DATA_DIR`` environment variable's folder;
3. the small subset bundled in the package (``smartfed/data/bundled/``), when it holds what was
   asked for: at least ``limit`` examples, or the whole split (``split_sizes``);
4. the dataset's :class:`~smartfed.data.hub.HubSource`, through ``datasets.load_dataset``
   (a local mirror, the Hugging Face cache, or the hub when online);
5. the bundled subset anyway, when it exists but is smaller than asked for and the hub copy could
   not be read: with a logged warning naming both sizes and why the hub failed;

and raises a one-line :class:`~smartfed.errors.ConfigError` naming every place it looked (and the
hub's failure) when none has it. A data dir that is given but does not exist is an error (a typo
should not silently fall back); one that exists but lacks this dataset is skipped with a logged
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
from smartfed.data.hub import HubSource, HubUnavailable, hub_records
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
    # The hub copy, read with `datasets.load_dataset` when no local file has the split.
    hub: HubSource | None = None
    meta_fields: tuple[str, ...] = field(default_factory=tuple)  # documented keys of Example.meta
    # Appended to the "not found" error, e.g. where to get a dataset that is not shipped offline.
    missing_hint: str = ""
    # Examples in each full split (as the reader counts them): tells whether a bundled subset is
    # the whole split, and how much of it a smaller subset holds.
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    # Built from other datasets and shipped whole inside the package (target sets): data dirs
    # and the hub are not searched.
    shipped: bool = False

    @property
    def hub_id(self) -> str | None:
        return self.hub.repo_id if self.hub is not None else None


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    splits: Mapping[str, str],
    description: str = "",
    label_field: str | None = None,
    hub: HubSource | None = None,
    meta_fields: Sequence[str] = (),
    missing_hint: str = "",
    split_sizes: Mapping[str, int] | None = None,
    shipped: bool = False,
) -> Callable[[Reader], Reader]:
    """Decorator registering ``reader`` under ``name``; returns the reader unchanged."""

    def decorator(reader: Reader) -> Reader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        if not splits:
            raise ValueError(f"dataset {name!r} needs at least one split")
        if hub is not None and not all(hub.covers(split) for split in splits):
            missing = [split for split in splits if not hub.covers(split)]
            raise ValueError(f"dataset {name!r}: the hub source has no split {missing}")
        DATASETS[name] = DatasetSpec(
            name=name,
            splits=dict(splits),
            reader=reader,
            description=description,
            label_field=label_field,
            hub=hub,
            meta_fields=tuple(meta_fields),
            missing_hint=missing_hint,
            split_sizes=dict(split_sizes or {}),
            shipped=shipped,
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


def _split_file(spec: DatasetSpec, split: str) -> str:
    if split not in spec.splits:
        raise ConfigError(
            f"dataset {spec.name!r} has no split {split!r}; splits: {', '.join(spec.splits)}"
        )
    return spec.splits[split]


def _user_roots(data_dir: str | os.PathLike[str] | None) -> list[tuple[str, str, Path]]:
    """(origin, label, folder) of ``--data_dir`` and ``$SMARTFED_DATA_DIR``, in that order."""
    roots: list[tuple[str, str, Path]] = []
    if data_dir is not None and str(data_dir) != "":
        roots.append(("data_dir", "--data_dir", Path(data_dir).expanduser()))
    env_dir = os.environ.get(DATA_DIR_ENV, "")
    if env_dir:
        roots.append(("env", f"${DATA_DIR_ENV}", Path(env_dir).expanduser()))
    for _, label, root in roots:
        if not root.is_dir():
            raise ConfigError(f"{label} {root} is not a directory")
    return roots


def resolve_split_file(
    name: str, split: str, *, data_dir: str | os.PathLike[str] | None = None
) -> ResolvedFile:
    """The local file of ``split`` of registered dataset ``name``: in ``data_dir``,
    ``$SMARTFED_DATA_DIR`` or the bundled subsets, whatever its size (the hub is not consulted;
    :func:`load_examples` is what decides where examples come from)."""
    spec = get_dataset(name)
    relative = _split_file(spec, split)
    roots = [*_user_roots(data_dir), ("bundled", "bundled subset", BUNDLED_DIR)]
    if spec.shipped:
        roots = roots[-1:]
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
            return ResolvedFile(path=path, origin=origin)
        skipped.append(f"{label} {root}")
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

    A registered name always wins over a file of the same name; where its examples come from is
    described in the module docstring. For a path, ``{split}`` in it is replaced by ``split`` and
    the ``*_field`` arguments map the file's keys (see :func:`load_jsonl`); for a registered
    dataset they are ignored. ``limit`` keeps the first ``limit`` examples in file order.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    key = os.fspath(name_or_path)
    _ensure_builtin()
    if key in DATASETS:
        return _load_registered(DATASETS[key], split, data_dir, limit)
    if not _looks_like_path(key):
        get_dataset(key)  # raises the "unknown dataset" error
    path = Path(key.replace("{split}", split)).expanduser()
    return load_jsonl(path, prompt_field, response_field, meta_fields, limit=limit)


def _read_file(spec: DatasetSpec, path: Path, split: str, limit: int | None) -> list[Example]:
    examples = list(itertools.islice(spec.reader(path, split), limit))
    if not examples and limit != 0:
        raise ConfigError(f"{path}: no examples")
    return examples


def _load_registered(
    spec: DatasetSpec, split: str, data_dir: str | os.PathLike[str] | None, limit: int | None
) -> list[Example]:
    name, relative = spec.name, _split_file(spec, split)
    if spec.shipped:
        return _read_file(spec, BUNDLED_DIR / relative, split, limit)
    skipped: list[str] = []
    for _, label, root in _user_roots(data_dir):
        if (root / relative).is_file():
            return _read_file(spec, root / relative, split, limit)
        skipped.append(f"{label} {root}")
    if skipped:
        logger.warning(
            "dataset %s split %s: %s not found in %s", name, split, relative, "; ".join(skipped)
        )

    bundled_path = BUNDLED_DIR / relative
    bundled = list(spec.reader(bundled_path, split)) if bundled_path.is_file() else []
    full_size = spec.split_sizes.get(split)
    wanted = limit if limit is not None else full_size
    if bundled and wanted is not None and len(bundled) >= wanted:
        logger.info("dataset %s split %s: using the bundled subset %s", name, split, bundled_path)
        return bundled[:limit]

    hub_failure = ""
    if spec.hub is not None:
        source = spec.hub.describe(split)
        try:
            records = hub_records(spec.hub, split)
        except HubUnavailable as exc:
            hub_failure = f"the hub copy {source} could not be read: {exc}"
        else:
            examples = list(itertools.islice(spec.hub.read(records, split), limit))
            if not examples and limit != 0:
                raise ConfigError(f"dataset {name!r} split {split!r}: hub {source}: no examples")
            logger.info(
                "dataset %s split %s: %d examples from the hub copy %s",
                name,
                split,
                len(examples),
                source,
            )
            return examples

    if bundled:
        of_full = f" of the {full_size}" if full_size is not None else ""
        asked = f"{limit} were asked for" if limit is not None else "the whole split was asked for"
        why = hub_failure or "the dataset has no hub copy registered"
        log = logger.warning if (limit is not None or hub_failure) else logger.info
        log(
            "dataset %s split %s: using the bundled subset, %d%s examples (%s): %s; pass "
            "--data_dir (or set $%s) to a folder containing %s for the full split",
            name,
            split,
            len(bundled),
            of_full,
            asked,
            why,
            DATA_DIR_ENV,
            relative,
        )
        return bundled[:limit]

    # The bundled file may exist without examples of this split (MBPP's holds no train ids).
    empty = " (no examples of this split)" if bundled_path.is_file() else ""
    places = [*skipped, f"bundled subset {BUNDLED_DIR}{empty}"]
    hub_part = f"; {hub_failure}" if hub_failure else ""
    hint = f"; {spec.missing_hint}" if spec.missing_hint else ""
    raise ConfigError(
        f"dataset {name!r} split {split!r}: {relative} not found in {'; '.join(places)}"
        f"{hub_part}; pass --data_dir (or set ${DATA_DIR_ENV}) to a folder containing "
        f"{relative}{hint}"
    )


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


def jsonl_records(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(location, record)`` pairs of a JSONL file, the location being ``path:line``: the input
    of a record reader (see :class:`~smartfed.data.hub.HubSource`)."""
    for line_no, record in iter_jsonl(path):
        yield f"{path}:{line_no}", record


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
