"""Where a run's per-round numbers also go (``--report_to``): TensorBoard or Weights & Biases.

metrics.jsonl in the run directory stays the record; a reporter mirrors each round's numbers
to a dashboard while the run goes on. One class per backend, registered by name
(:func:`register_reporter`); ``none`` is the base class, which reports nowhere. The run
recorder (:mod:`smartfed.engine.recorder`) opens one with :func:`open_reporter` and logs a step
per round (step 0: the evaluation before training).

Resume: a reporter is opened with ``first_step``, the first step this process will write; what
an earlier process wrote from that step on belongs to a round that did not finish and is
dropped (TensorBoard: ``purge_step``), so a resumed run shows every round once.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from smartfed.errors import ConfigError

__all__ = [
    "MetricsReporter",
    "TensorBoardReporter",
    "WandbReporter",
    "check_reporter",
    "open_reporter",
    "register_reporter",
    "reporter_names",
]

log = logging.getLogger(__name__)

_REPORTERS: dict[str, type[MetricsReporter]] = {}


def register_reporter(cls: type[MetricsReporter]) -> type[MetricsReporter]:
    """Class decorator: makes ``cls`` a choice of ``--report_to`` under ``cls.name``."""
    _REPORTERS[cls.name] = cls
    return cls


def reporter_names() -> tuple[str, ...]:
    return tuple(_REPORTERS)


def _reporter_class(name: str) -> type[MetricsReporter]:
    if name not in _REPORTERS:
        raise ConfigError(f"--report_to {name!r}: expected one of {', '.join(_REPORTERS)}")
    return _REPORTERS[name]


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_reporter(name: str) -> None:
    """Fail in one line, before any work, when ``--report_to name`` cannot run here."""
    _reporter_class(name).check_available()


def open_reporter(
    name: str, run_dir: str | Path, *, first_step: int = 0, config: Mapping[str, Any] | None = None
) -> MetricsReporter:
    """The ``--report_to`` backend ``name`` for the run in ``run_dir`` (see the module doc)."""
    cls = _reporter_class(name)
    cls.check_available()
    return cls(Path(run_dir), first_step=first_step, config=dict(config or {}))


@register_reporter
class MetricsReporter:
    """Mirrors a run's per-round numbers to a dashboard; this base reports nowhere (``none``).

    Args:
        run_dir: the run directory; a backend writes below it.
        first_step: the first step this process writes (see the module doc).
        config: the run's settings, for backends that show them.
    """

    name: ClassVar[str] = "none"

    def __init__(self, run_dir: Path, *, first_step: int = 0, config: Mapping[str, Any]):
        self.run_dir = run_dir
        self.first_step = first_step

    @classmethod
    def check_available(cls) -> None:
        """Raise a one-line ConfigError when the backend's package is missing."""

    def log(
        self,
        step: int,
        scalars: Mapping[str, float],
        histograms: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Write one step: named scalars and named value distributions."""

    def close(self, *, failed: bool = False) -> None:
        """Flush and release the backend (``failed``: the run stopped on an error)."""


@register_reporter
class TensorBoardReporter(MetricsReporter):
    """TensorBoard event files in ``<run_dir>/tensorboard/``: ``tensorboard --logdir <run_dir>``."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, *, first_step: int = 0, config: Mapping[str, Any]):
        super().__init__(run_dir, first_step=first_step, config=config)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = run_dir / "tensorboard"
        # An earlier process's events from first_step on are hidden by the reader (purge_step);
        # a fresh directory needs no purge marker.
        purge = first_step if self.log_dir.exists() else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        if first_step == 0 and config:
            lines = "\n".join(f"    {key} = {value!r}" for key, value in sorted(config.items()))
            self.writer.add_text("config", lines, 0)

    @classmethod
    def check_available(cls) -> None:
        if not _installed("tensorboard"):
            raise ConfigError(
                "--report_to tensorboard needs the tensorboard package, a SmartFed dependency: "
                "pip install 'tensorboard>=2.15,<3'"
            )

    def log(
        self,
        step: int,
        scalars: Mapping[str, float],
        histograms: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        for tag, values in (histograms or {}).items():
            self.writer.add_histogram(tag, np.asarray(values, dtype=np.float64), step)
        self.writer.flush()  # a crash loses no finished round

    def close(self, *, failed: bool = False) -> None:
        self.writer.close()


@register_reporter
class WandbReporter(MetricsReporter):
    """A Weights & Biases run, its files in ``<run_dir>/wandb/``.

    wandb's own environment applies: ``WANDB_MODE=offline`` logs without network (``wandb sync``
    uploads later), ``WANDB_PROJECT`` names the project (default ``smartfed``). The run's id is
    kept in ``<run_dir>/wandb-run-id`` so a resumed run continues the same wandb run; wandb
    ignores steps at or below its last one, so a round that did not finish keeps its first
    values there (metrics.jsonl has the replayed ones).
    """

    name = "wandb"
    ID_FILE = "wandb-run-id"

    def __init__(self, run_dir: Path, *, first_step: int = 0, config: Mapping[str, Any]):
        super().__init__(run_dir, first_step=first_step, config=config)
        import wandb

        self.wandb = wandb
        id_path = run_dir / self.ID_FILE
        if id_path.is_file():
            run_id = id_path.read_text(encoding="utf-8").strip()
        else:
            run_id = secrets.token_hex(4)
            run_dir.mkdir(parents=True, exist_ok=True)
            id_path.write_text(run_id + "\n", encoding="utf-8")
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "smartfed",
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=dict(config),
            )
        except Exception as exc:  # wandb raises its own types (no login, no network, ...)
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"--report_to wandb: wandb could not start a run ({first_line}); run `wandb "
                "login`, or set WANDB_MODE=offline to log without network"
            ) from None

    @classmethod
    def check_available(cls) -> None:
        if not _installed("wandb"):
            raise ConfigError(
                "--report_to wandb needs the wandb package: pip install 'smartfed[wandb]' "
                "(WANDB_MODE=offline logs without network)"
            )

    def log(
        self,
        step: int,
        scalars: Mapping[str, float],
        histograms: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        values: dict[str, Any] = dict(scalars)
        for tag, sequence in (histograms or {}).items():
            values[tag] = self.wandb.Histogram(list(sequence))
        self.run.log(values, step=step)

    def close(self, *, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
