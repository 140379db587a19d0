"""The run directory: the contract every later tool (report, bench, eval, resume) reads.

    config.json        resolved configuration
    partitions.json    per-client partition sizes (and label histograms)
    metrics.jsonl      one JSON object per completed round
    checkpoints/       round_NNNN/{global_state.safetensors,state.json}: whole server state
    final/             the trained model in its method's format (SmartFed: routers + MoRE
                       config; FedIT / FFA-LoRA: a PEFT adapter folder), loadable for inference
    final_metric.json  the task benchmark on the final model (with --metric_samples)
    usage.json         routing methods: per matrix, the share of routing per pool module
    summary.json       totals

Every file is written atomically (temp file + rename), and a checkpoint folder appears only
once complete, so a crash (even ``kill -9``) leaves the last complete round intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from smartfed.errors import ConfigError
from smartfed.utils.io import write_dir_atomic, write_json_atomic, write_text_atomic

CHECKPOINTS_KEPT = 2
GLOBAL_STATE_NAME = "global_state.safetensors"


@dataclass
class ServerState:
    """Everything the server needs to continue a run after ``round``."""

    round: int
    global_state: dict[str, torch.Tensor]  # what the server averages (routers, LoRA A/B, ...)
    server_logic: dict[str, Any]  # the method's server state (SmartFed: quotas, EMA importance)
    totals: dict[str, float] = field(default_factory=dict)  # bytes, wall time, energy so far
    rng: dict[str, Any] = field(default_factory=dict)

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
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{flag} {self.path}: no config.json there (not a SmartFed run directory)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{flag} {self.path}: cannot read config.json: {exc.strerror or exc}"
            ) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{self.config_path} is not valid JSON: {exc}") from None

    # ------------------------------------------------------------------ metrics
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for number, line in enumerate(self.metrics_path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(
                        f"{self.metrics_path}:{number + 1}: bad JSON: {exc}"
                    ) from None
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        # The whole file is rewritten atomically: a few KB per run, never half a line.
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_text_atomic(self.metrics_path, text)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: ServerState) -> Path:
        def fill(tmp: Path) -> None:
            save_file(
                {k: v.contiguous() for k, v in state.global_state.items()},
                str(tmp / GLOBAL_STATE_NAME),
            )
            meta = {
                "round": state.round,
                "server_logic": state.server_logic,
                "totals": state.totals,
                "rng": state.rng,
            }
            (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

        target = write_dir_atomic(self.checkpoints / f"round_{state.round:04d}", fill)
        for old in self._checkpoint_dirs()[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)
        return target

    def _checkpoint_dirs(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("round_[0-9][0-9][0-9][0-9]") if p.is_dir())

    def latest_checkpoint(self) -> ServerState | None:
        dirs = self._checkpoint_dirs()
        if not dirs:
            return None
        latest = dirs[-1]
        try:
            meta = json.loads((latest / "state.json").read_text(encoding="utf-8"))
            global_state = load_file(str(latest / GLOBAL_STATE_NAME))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"checkpoint {latest} is unreadable: {exc}") from None
        return ServerState(
            round=int(meta["round"]),
            global_state=global_state,
            server_logic=dict(meta.get("server_logic", {})),
            totals=dict(meta.get("totals", {})),
            rng=dict(meta.get("rng", {})),
        )
