"""The run directory: the contract every later tool (report, bench, eval, resume) reads.

    config.json        resolved configuration
    partitions.json    per-client partition sizes (and label histograms)
    metrics.jsonl      one JSON object per completed round
    checkpoints/       round_NNNN/{global_state.safetensors,state.json,checksums.json}: the
                       whole server state after round NNNN, with its metrics row and the sha256
                       of both files
    final/             the trained model in its method's format (SmartFed: routers + MoRE
                       config; FedIT / FFA-LoRA: a PEFT adapter folder), loadable for inference
    final_metric.json  the task benchmark on the final model (with --metric_samples)
    usage.json         routing methods: per matrix, the share of routing per pool module
    summary.json       totals
    run.lock           the lock of the process writing the run (its pid); see :meth:`lock`

Every file is written atomically (temp file, fsync, rename), and a checkpoint folder appears
only once complete, so a crash (even ``kill -9``) leaves the last complete round intact. A
round is committed by its checkpoint; its metrics row is appended after it, so metrics.jsonl
never describes a round that is not checkpointed (a row lost to a crash between the two is
restored from the checkpoint on resume).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, load_file, save

from smartfed.errors import ConfigError, DamagedFileError, RunDirectoryBusy
from smartfed.utils.io import (
    read_jsonl,
    storage_errors,
    write_dir_atomic,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2
GLOBAL_STATE_NAME = "global_state.safetensors"
STATE_NAME = "state.json"
CHECKSUMS_NAME = "checksums.json"
LOCK_NAME = "run.lock"
DP_KEY = "dp_key.json"  # central DP's secret noise key (engine/privacy.py)
# What a run writes in its directory: --overwrite deletes these (and their temporary files).
RUN_FILES = (
    "config.json", "partitions.json", "metrics.jsonl", "checkpoints", "final",
    "final_metric.json", "usage.json", "summary.json", "dp_key.json", "tensorboard", "wandb",
    "wandb-run-id",
)  # fmt: skip

# The run directories this process has locked: flock refuses a second descriptor of the same
# file even within one process, and this names the cause.
_HELD: set[Path] = set()
_HELD_GUARD = threading.Lock()
_SAID: set[str] = set()  # fallbacks already reported by this process


@dataclass
class ServerState:
    """Everything the server needs to continue a run after ``round``."""

    round: int
    global_state: dict[str, torch.Tensor]  # what the server averages (routers, LoRA A/B, ...)
    server_logic: dict[str, Any]  # the method's server state (SmartFed: quotas, EMA importance)
    totals: dict[str, float] = field(default_factory=dict)  # bytes, wall time, energy so far
    rng: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] | None = None  # the round's metrics row, committed with the checkpoint
    # Set by a resume: metrics.jsonl's rows up to ``round`` (the row above restored if lost).
    metrics: list[dict[str, Any]] | None = None

    @staticmethod
    def capture_rng() -> dict[str, Any]:
        return {
            "python": repr(random.getstate()),
            "numpy": np.random.get_state()[1].tolist()[:4],  # fingerprint only; seeds are derived
            "torch": torch.random.get_rng_state().tolist()[:8],
        }


def check_output_dir(path: str | Path, flag: str = "--output_dir") -> None:
    """Refuse, in one line naming ``flag``, a run directory that cannot be written: an existing
    file, a path through a file, or a place where no folder can be created or written (read-only,
    no permission, /proc, ...). Tried for real, then undone: leaves nothing behind."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {path}: that is an existing file, not a folder")
    missing = [p for p in (target, *target.parents) if not p.exists()]  # deepest first
    blocking = next((p for p in target.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{flag} {path}: {blocking} is a file, so no folder can be made in it")
    try:
        target.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".smartfed-write-check-", dir=target)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ConfigError(
            f"{flag} {path}: cannot create or write a folder there: "
            f"{exc.strerror or type(exc).__name__}{where}"
        ) from None
    finally:
        for folder in missing:
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue  # never made: mkdir failed below it
            except OSError:
                break  # no longer empty (someone else's): keep it and what is above it


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ one writer
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory's exclusive lock (``flock`` on run.lock, which records the
        owner's pid) for the block. The operating system drops it when the process ends, even
        on ``kill -9``, so a crashed run can be resumed at once. A directory another process,
        or another run of this process, holds is refused in one line."""
        with storage_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        with _HELD_GUARD:
            if key in _HELD:
                raise RunDirectoryBusy(
                    f"{self.path} is being written by another run in this process "
                    f"(pid {os.getpid()}); wait for it to finish or choose another --output_dir"
                )
            _HELD.add(key)
        try:
            fd = self._acquire()
            try:
                yield
            finally:
                os.close(fd)  # releases the lock; the file stays (unlinking it would race)
        finally:
            with _HELD_GUARD:
                _HELD.discard(key)

    def _acquire(self) -> int:
        path = self.path / LOCK_NAME
        with storage_errors(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirectoryBusy(
                f"{self.path} is being written by another smartfed run (pid {owner}, see "
                f"{path}); wait for it to finish or choose another --output_dir"
            ) from None
        try:
            with storage_errors(path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def leftover_files(self) -> list[str]:
        """What the folder holds that a new run would not expect there (sorted names): all but
        its lock file and a DP noise key placed before the run (``--dp_noise_multiplier``)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in (LOCK_NAME, DP_KEY))

    def remove_run_files(self) -> list[str]:
        """Delete a previous run's files (:data:`RUN_FILES` and their temporary files); other
        files stay. Returns the names deleted."""
        removed = []
        present = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        for name in present:
            # A temporary file of the atomic writes: ".<name>.<random>" (hidden, never a user's).
            temporary = name.startswith(".") and any(name.startswith(f".{f}.") for f in RUN_FILES)
            if name in RUN_FILES or temporary:
                target = self.path / name
                with storage_errors(target):
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                removed.append(name)
        return removed

    # ------------------------------------------------------------------ files
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def read_config(self, flag: str = "--resume") -> dict[str, Any]:
        """The run's config.json; ``flag`` is the option that named this folder, for errors."""
        if not self.path.is_dir():
            what = "a file" if self.path.exists() else "no such folder"
            raise ConfigError(f"{flag} {self.path}: {what}; expected a SmartFed run directory")
        try:
            saved = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{flag} {self.path}: no config.json there (not a SmartFed run directory)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{flag} {self.path}: cannot read config.json: {exc.strerror or exc}"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DamagedFileError(
                f"{self.config_path} is damaged (not valid JSON: {exc})"
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("method"), str):
            raise DamagedFileError(f"{self.config_path} is damaged (it names no method)")
        return saved

    # ------------------------------------------------------------------ metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path, missing_ok=True)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        # The whole file is rewritten atomically: a few KB per run, never half a line.
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_text_atomic(self.metrics_path, text)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: ServerState) -> Path:
        """Commit ``state``: a complete, fsync'd checkpoint folder appears, with the sha256 of
        its files, or nothing does."""
        tensors = save({k: v.contiguous() for k, v in state.global_state.items()})
        meta = json.dumps(
            {
                "round": state.round,
                "server_logic": state.server_logic,
                "totals": state.totals,
                "rng": state.rng,
                "row": state.row,
                # The state's own order: safetensors keeps another, and what iterates over the
                # state (DP noise draws, tensor by tensor) must see the order a live run sees.
                "keys": list(state.global_state),
            },
            indent=1,
        ).encode("utf-8")

        def fill(tmp: Path) -> None:
            (tmp / GLOBAL_STATE_NAME).write_bytes(tensors)
            (tmp / STATE_NAME).write_bytes(meta)
            checksums = {
                GLOBAL_STATE_NAME: hashlib.sha256(tensors).hexdigest(),
                STATE_NAME: hashlib.sha256(meta).hexdigest(),
            }
            (tmp / CHECKSUMS_NAME).write_text(json.dumps(checksums, indent=1), encoding="utf-8")

        target = write_dir_atomic(self.checkpoints / f"round_{state.round:04d}", fill)
        for old in self._checkpoint_dirs()[:-CHECKPOINTS_KEPT]:
            with storage_errors(old):
                shutil.rmtree(old)
        return target

    def _checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("round_[0-9][0-9][0-9][0-9]") if p.is_dir())

    def latest_checkpoint(self) -> ServerState | None:
        """The newest intact checkpoint (checksums verified), or None when there is none at
        all. A damaged newer one is passed over with one logged line; when every checkpoint is
        damaged, :class:`DamagedFileError` names the newest."""
        dirs = self._checkpoint_dirs()
        damage: list[str] = []
        for folder in reversed(dirs):
            try:
                state = read_checkpoint(folder)
            except DamagedFileError as exc:
                damage.append(str(exc))
                continue
            said = f"{self.path}: resuming from round {state.round} instead: {'; '.join(damage)}"
            if damage and said not in _SAID:  # once, also where a run is checked twice
                _SAID.add(said)
                log.warning("%s", said)
            return state
        if damage:
            raise DamagedFileError(
                f"no intact checkpoint in {self.checkpoints} ({damage[0]}); start the run "
                "again with --overwrite or choose another --output_dir"
            )
        return None


def read_checkpoint(folder: Path) -> ServerState:
    """The checkpoint in ``folder``, verified against its checksums.json; a missing, truncated
    or altered file raises :class:`DamagedFileError` naming it. (Checkpoints written before
    checksums existed are checked for what they hold instead.)"""
    checksums_path = folder / CHECKSUMS_NAME
    blobs: dict[str, bytes] = {}
    for name in (GLOBAL_STATE_NAME, STATE_NAME):
        try:
            blobs[name] = (folder / name).read_bytes()
        except FileNotFoundError:
            raise DamagedFileError(f"checkpoint file {folder / name} is missing") from None
        except OSError as exc:
            raise DamagedFileError(
                f"cannot read checkpoint file {folder / name}: {exc.strerror or exc}"
            ) from None
    if checksums_path.exists():
        try:
            checksums = json.loads(checksums_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DamagedFileError(f"checkpoint file {checksums_path} is damaged: {exc}") from None
        for name, blob in blobs.items():
            if (
                not isinstance(checksums, dict)
                or checksums.get(name) != hashlib.sha256(blob).hexdigest()
            ):
                raise DamagedFileError(
                    f"checkpoint file {folder / name} is damaged (its sha256 differs from "
                    f"{CHECKSUMS_NAME})"
                )
    try:
        meta = json.loads(blobs[STATE_NAME])
        global_state = load(blobs[GLOBAL_STATE_NAME])
        order = meta.get("keys")
        if order is not None:
            if sorted(order) != sorted(global_state):
                raise ValueError(f"its tensors are not those {STATE_NAME} lists")
            global_state = {key: global_state[key] for key in order}
        else:  # written before the order was kept: load_file's order, as resumes had then
            global_state = load_file(str(folder / GLOBAL_STATE_NAME))
        state = ServerState(
            round=int(meta["round"]),
            global_state=global_state,
            server_logic=dict(meta.get("server_logic") or {}),
            totals=dict(meta.get("totals") or {}),
            rng=dict(meta.get("rng") or {}),
            row=meta.get("row"),
        )
    except Exception as exc:  # whatever a damaged file makes json or safetensors raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DamagedFileError(
            f"checkpoint {folder} is damaged ({type(exc).__name__}: {detail})"
        ) from None
    if folder.name != f"round_{state.round:04d}":
        raise DamagedFileError(f"checkpoint {folder} is damaged (it says round {state.round})")
    return state
