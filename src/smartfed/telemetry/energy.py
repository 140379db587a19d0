"""Cumulative energy (kWh) of a federated run, read after every round, via CodeCarbon offline.

Typical use::

    with EnergyMeter(output_dir=run_dir) as meter:
        for rnd in range(1, num_rounds + 1):
            ...  # one federated round
            row["energy_kwh"] = meter.cumulative_kwh()  # float, or None when unavailable
        total_kwh = meter.stop()  # idempotent; __exit__ calls it again harmlessly
    row["energy_method"] = meter.method

A resumed run passes the checkpointed total as ``offset_kwh`` so the count carries on.

The numbers are whole-machine figures (CodeCarbon ``tracking_mode="machine"``). Without power
counters (no RAPL, as in most VMs and containers) CodeCarbon *estimates* CPU power from the
system CPU load and a TDP, and RAM power from the installed memory size; :attr:`EnergyMeter.method`
says which, so reports can label the figure "estimated, not measured".

CodeCarbon internals this module relies on (checked against CodeCarbon 3.3.2). They are private
and may change in any release, so the meter runs only on the release series in
:data:`TESTED_CODECARBON`: on another version :meth:`EnergyMeter.start` gives a no-op meter with
one warning line (:func:`untested_codecarbon`), and the run goes on with null energy figures
rather than figures read from attributes that may mean something else.

* ``OfflineEmissionsTracker.start()/stop()`` (and ``__init__``) are wrapped in CodeCarbon's
  ``@suppress(Exception)``: they never raise, they log and return ``None``. Success of
  ``start()`` is therefore checked through ``tracker._start_time is not None``.
* No public call returns the energy so far without side effects: ``flush()`` returns kg CO2eq
  (not kWh) and writes to every output; ``final_emissions_data`` only exists after ``stop()``;
  ``start_task()/stop_task()`` pause the periodic scheduler and reset the hardware windows. So a
  read calls ``tracker._measure_power_and_energy()`` -- the very method the periodic scheduler
  runs every ``measure_power_secs`` and that ``flush()``/``stop()`` run before reporting -- and
  then reads ``tracker._total_energy.kWh``, the running total that ``stop()`` reports as
  ``final_emissions_data.energy_consumed``. A forced read integrates the time since the
  previous measurement, so rounds shorter than ``measure_power_secs`` are fully counted.
* The periodic measurement runs on a ``threading.Timer`` thread; a forced read racing it would
  integrate the same interval twice, so :func:`_tracker_class` serialises
  ``_measure_power_and_energy`` with a lock.
* ``stop()`` cancels its two ``PeriodicScheduler`` timers (``_scheduler``: measurement,
  ``_scheduler_monitor_power``: 1 s load sampling) without joining them, and
  ``PeriodicScheduler._run`` re-arms before it looks at ``_stopped``: a timer firing during
  ``stop()`` can survive it. The meter cancels and joins the ``_timer`` of both afterwards.
* The offline tracker still calls the Electricity Maps API at ``stop()`` when a token is set in
  the environment (``CODECARBON_ELECTRICITYMAPS_API_TOKEN``) or a ``.codecarbon.config``; the
  meter clears ``_electricitymaps_api_token`` so it never goes on the network.
* ``OfflineEmissionsTracker.__init__`` logs at INFO/WARNING before its ``log_level`` applies, so
  the meter mutes the ``codecarbon`` logger itself (records are captured, not printed, while
  the meter calls into CodeCarbon; the reason of a failure is taken from them).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "CSV_FILE_NAME",
    "DEFAULT_COUNTRY_ISO_CODE",
    "TESTED_CODECARBON",
    "EnergyMeter",
    "untested_codecarbon",
]

log = logging.getLogger(__name__)

#: CodeCarbon's offline tracker needs a country for its carbon-intensity table; it does not
#: change the kWh figures at all, only the CO2eq CodeCarbon writes to its CSV. "USA" is the
#: example CodeCarbon documents; the table has no world-average entry.
DEFAULT_COUNTRY_ISO_CODE = "USA"
#: CodeCarbon's own default interval between background measurements.
DEFAULT_MEASURE_POWER_SECS = 15.0
#: Name of CodeCarbon's CSV, written into ``output_dir`` at ``stop()`` (only when one is given).
CSV_FILE_NAME = "emissions.csv"

_CC_LOGGER = "codecarbon"
_JOIN_TIMEOUT_S = 5.0

# Modes of codecarbon.external.hardware.CPU that read a hardware energy/power counter.
_CPU_COUNTER_MODES = {
    "intel_rapl": "CPU energy measured from RAPL counters",
    "windows_emi": "CPU energy measured by the Windows Energy Meter Interface",
    "intel_power_gadget": "CPU power measured by Intel Power Gadget",
}

#: CodeCarbon release series (major.minor) whose private internals this module was checked
#: against (the list in the module docstring).
TESTED_CODECARBON = ("3.3",)

_tracker_cls: type | None = None


def untested_codecarbon(version: str | None = None) -> str | None:
    """None when ``version`` (default: the installed CodeCarbon's) is in a tested series, else
    the one-line reason the meter stays off. Reads the package metadata: no CodeCarbon import."""
    if version is None:
        try:
            version = importlib.metadata.version("codecarbon")
        except importlib.metadata.PackageNotFoundError:
            return "CodeCarbon is not installed (pip install 'codecarbon>=3.3,<3.4')"
    match = re.match(r"(\d+)\.(\d+)(\.|$)", version)
    if match is not None and f"{match[1]}.{match[2]}" in TESTED_CODECARBON:
        return None
    tested = ", ".join(f"{series}.x" for series in TESTED_CODECARBON)
    return (
        f"CodeCarbon {version} is untested: the energy meter reads CodeCarbon internals "
        f"checked with codecarbon {tested} only; install that (pip install "
        "'codecarbon>=3.3,<3.4')"
    )


def _tracker_class() -> type:
    """``OfflineEmissionsTracker`` whose measurement step is serialised with a lock."""
    global _tracker_cls
    if _tracker_cls is None:
        from codecarbon import OfflineEmissionsTracker

        class _SerialisedOfflineTracker(OfflineEmissionsTracker):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._smartfed_measure_lock = threading.RLock()
                super().__init__(*args, **kwargs)

            def _measure_power_and_energy(self) -> None:
                with self._smartfed_measure_lock:
                    super()._measure_power_and_energy()

        _tracker_cls = _SerialisedOfflineTracker
    return _tracker_cls


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _codecarbon_muted() -> Iterator[list[logging.LogRecord]]:
    """Capture (instead of print) the ``codecarbon`` logger's WARNING+ records for a while.

    Afterwards its own handlers come back with level ERROR (what ``log_level="error"`` sets),
    so the background threads only ever print real errors.
    """
    cc = logging.getLogger(_CC_LOGGER)
    saved = list(cc.handlers)
    capture = _Capture()
    cc.handlers = [capture]
    cc.setLevel(logging.WARNING)
    try:
        yield capture.records
    finally:
        cc.handlers = saved
        cc.setLevel(logging.ERROR)


def _failure_reason(records: list[logging.LogRecord], default: str) -> str:
    """The exception CodeCarbon's ``@suppress`` swallowed, else its last error message."""
    for record in reversed(records):
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            return f"{type(exc).__name__}: {exc}"
    errors = [r for r in records if r.levelno >= logging.ERROR]
    if errors:
        return errors[-1].getMessage().strip().splitlines()[0]
    return default


def _join_timers(schedulers: list[Any]) -> None:
    """Cancel and join the ``threading.Timer`` of CodeCarbon ``PeriodicScheduler`` objects."""
    for scheduler in schedulers:
        if scheduler is None:
            continue
        for _ in range(5):  # a timer firing right now re-arms once; never loops for long
            timer = getattr(scheduler, "_timer", None)
            if timer is None:
                break
            scheduler.stop()
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join(_JOIN_TIMEOUT_S)
            if getattr(scheduler, "_timer", None) is timer:
                break


def _fmt_w(watts: float) -> str:
    return f"{watts:.3g} W"


def _describe(tracker: Any, version: str, country: str) -> tuple[str, str]:
    """One-line description of how the tracker gets energy, and its quality label.

    The label is ``"estimated"`` when no component reads a hardware counter, else
    ``"partly measured"`` (RAM power is always an estimate in CodeCarbon).
    """
    from codecarbon.core.cpu import DEFAULT_POWER_PER_CORE
    from codecarbon.external.hardware import POWER_CONSTANT

    conf: dict[str, Any] = getattr(tracker, "_conf", {})
    cpu_text, ram_text, gpu_text = "CPU not tracked", "RAM not tracked", "no GPU"
    measured = False
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__  # CodeCarbon itself avoids isinstance here (module reloads)
        if kind == "CPU":
            mode = getattr(hw, "_mode", "?")
            tdp = getattr(hw, "_tdp", None)
            model = getattr(hw, "_model", None) or "unknown CPU"
            if mode in _CPU_COUNTER_MODES:
                cpu_text = _CPU_COUNTER_MODES[mode]
                measured = True
                continue
            threads = int(conf.get("cpu_count") or 0)
            sockets = int(conf.get("cpu_physical_count") or 1)
            if getattr(tracker, "_force_cpu_power", None) is not None:
                source = "TDP forced by the user"
            elif getattr(hw, "_is_generic_tdp", False) or (
                tdp == POWER_CONSTANT and model == "unknown CPU"
            ):
                source = "CodeCarbon's generic TDP"
            elif threads and tdp == threads * DEFAULT_POWER_PER_CORE * sockets:
                source = (
                    f"{model!r} not in CodeCarbon's TDP table, default "
                    f"{DEFAULT_POWER_PER_CORE} W/thread x {threads} threads"
                )
            else:
                source = f"TDP of {model!r} from CodeCarbon's CPU table"
            tdp_text = _fmt_w(float(tdp)) if tdp is not None else "unknown"
            source += ", no readable RAPL counter" if sys.platform == "linux" else ""
            if mode == "cpu_load":
                cpu_text = f"CPU power estimated from CPU load x TDP {tdp_text} ({source})"
            elif mode == "constant":
                cpu_text = f"CPU power estimated as constant 50% of TDP {tdp_text} ({source})"
            else:
                cpu_text = f"CPU power estimated ({mode}, TDP {tdp_text}, {source})"
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            try:
                watts = float(hw.total_power().W)
            except Exception:  # a description must never break the meter
                watts = float("nan")
            how = "forced by the user" if forced is not None else "CodeCarbon's RAM-size model"
            ram_text = f"RAM power estimated {_fmt_w(watts)} ({how})"
        elif kind == "GPU":
            measured = True
            gpu_text = f"GPU energy measured by NVML/AMD SMI ({conf.get('gpu_model') or 'GPU'})"
        elif kind == "AppleSiliconChip":
            measured = True
            part = getattr(hw, "chip_part", "CPU")
            text = f"Apple {part} power measured by powermetrics"
            if part == "GPU":
                gpu_text = text
            else:
                cpu_text = text
        elif kind == "Raspberry":
            measured = True
            part = getattr(hw, "chip_part", "CPU")
            text = f"Raspberry Pi {part} power measured by its PMIC"
            if part == "RAM":
                ram_text = text
            else:
                cpu_text = text
    quality = "partly measured" if measured else "estimated"
    label = "partly measured" if measured else "estimated, not measured"
    text = (
        f"CodeCarbon {version} offline ({country}, {conf.get('tracking_mode', 'machine')}-wide), "
        f"{label}: {cpu_text}; {ram_text}; {gpu_text}"
    )
    return text, quality


class EnergyMeter:
    """Cumulative energy of a run in kWh, via CodeCarbon's ``OfflineEmissionsTracker``.

    Args:
        country_iso_code: 3-letter ISO code for CodeCarbon's carbon-intensity table (default
            :data:`DEFAULT_COUNTRY_ISO_CODE`). It only affects the CO2eq in CodeCarbon's CSV,
            never the kWh. An unknown code is reported once and otherwise ignored.
        output_dir: when given, CodeCarbon appends one row per run to ``output_dir /``
            :data:`CSV_FILE_NAME` at :meth:`stop` (the folder is created). ``None`` (default):
            no file is written anywhere.
        enabled: ``False`` gives a no-op meter (:meth:`cumulative_kwh` returns ``None``).
        offset_kwh: energy already spent before this process (a resumed run's checkpointed
            total); added to every reading.
        measure_power_secs: interval of CodeCarbon's background measurement. Readings force a
            fresh measurement anyway; this only matters for counters that wrap (RAPL).

    Unavailable energy is ``None``, never NaN (NaN is not valid JSON): a disabled meter, a
    meter whose CodeCarbon failed to start or to measure (one warning line says why), or one
    read before :meth:`start`. Once a meter has failed it stays unavailable; the offset alone
    is not reported, since it would pass for "no energy used".
    """

    def __init__(
        self,
        *,
        country_iso_code: str = DEFAULT_COUNTRY_ISO_CODE,
        output_dir: str | Path | None = None,
        enabled: bool = True,
        offset_kwh: float = 0.0,
        measure_power_secs: float = DEFAULT_MEASURE_POWER_SECS,
    ) -> None:
        code = str(country_iso_code).strip().upper()
        if len(code) != 3 or not code.isalpha():
            raise ValueError(
                f"country_iso_code must be a 3-letter ISO code, got {country_iso_code!r}"
            )
        offset = float(offset_kwh)
        if not math.isfinite(offset) or offset < 0:
            raise ValueError(f"offset_kwh must be a finite number >= 0, got {offset_kwh!r}")
        if not measure_power_secs > 0:
            raise ValueError(f"measure_power_secs must be > 0, got {measure_power_secs!r}")
        self.country_iso_code = code
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.enabled = bool(enabled)
        self.offset_kwh = offset
        self.measure_power_secs = float(measure_power_secs)

        self._lock = threading.RLock()
        self._tracker: Any = None
        self._state = "new"  # new -> running -> stopped, or -> unavailable
        self._last_kwh: float | None = None  # tracker energy of the last reading (no offset)
        self._final_kwh: float | None = None  # offset included
        self._method = "energy not tracked: meter not started"
        self._quality = "unavailable"
        if not self.enabled:
            self._state = "unavailable"
            self._method = "energy not tracked: disabled (enabled=False)"
            log.info("energy: %s", self._method)

    # ------------------------------------------------------------------ public API
    @property
    def method(self) -> str:
        """Human-readable, one line: how the energy figures are obtained (or why there are none)."""
        return self._method

    @property
    def quality(self) -> str:
        """``"estimated"``, ``"partly measured"`` or ``"unavailable"`` (see :attr:`method`)."""
        return self._quality

    @property
    def available(self) -> bool:
        """True while running, and after a clean :meth:`stop`."""
        return self._state in ("running", "stopped")

    def start(self) -> EnergyMeter:
        """Start tracking (once; later calls do nothing). Never raises for CodeCarbon problems."""
        with self._lock:
            if self._state != "new":
                return self
            try:
                untested = untested_codecarbon()
                if untested is not None:  # the internals below may mean something else there
                    self._fail(untested)
                    return self
                self._start_tracker()
            except Exception as exc:  # any failure -> no-op meter, the run goes on
                self._fail(f"CodeCarbon failed to start ({type(exc).__name__}: {exc})")
            return self

    def cumulative_kwh(self) -> float | None:
        """Energy since the start of the run (``offset_kwh`` included), in kWh, or ``None``.

        Forces a fresh CodeCarbon measurement, so the value covers everything up to this call
        even when a round is shorter than ``measure_power_secs``. Successive values never
        decrease. After :meth:`stop` it returns the final total.
        """
        with self._lock:
            if self._state == "stopped":
                return self._final_kwh
            if self._state != "running":
                return None
            try:
                with _codecarbon_muted():
                    kwh = self._measure()
            except Exception as exc:
                self._fail(f"CodeCarbon measurement failed ({type(exc).__name__}: {exc})")
                return None
            return self.offset_kwh + kwh

    def stop(self) -> float | None:
        """Stop tracking; the total in kWh (``offset_kwh`` included), or ``None`` if unavailable.

        Idempotent: later calls return the same value. No CodeCarbon thread survives it.
        """
        with self._lock:
            if self._state != "running":
                return self._final_kwh
            tracker = self._tracker
            schedulers = [tracker._scheduler, tracker._scheduler_monitor_power]
            try:
                with _codecarbon_muted():
                    tracker.stop()  # @suppress'ed by CodeCarbon: does not raise
                    data = getattr(tracker, "final_emissions_data", None)
                    if data is not None:
                        kwh = float(data.energy_consumed)
                    else:  # stop() failed after its last measurement: use the running total
                        kwh = float(tracker._total_energy.kWh)
            except Exception as exc:
                self._fail(f"CodeCarbon failed to stop ({type(exc).__name__}: {exc})")
                return None
            finally:
                _join_timers(schedulers)
                self._tracker = None
            if self._last_kwh is not None:
                kwh = max(kwh, self._last_kwh)
            self._last_kwh = kwh
            self._final_kwh = self.offset_kwh + kwh
            self._state = "stopped"
            return self._final_kwh

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EnergyMeter(state={self._state!r}, method={self._method!r})"

    # ------------------------------------------------------------------ internals
    def _start_tracker(self) -> None:
        import codecarbon
        from codecarbon.output_methods.base_output import OutputMethod

        version = getattr(codecarbon, "__version__", "?")
        output_methods: list[Any] = []
        output_dir = "."  # CodeCarbon checks that it exists; nothing is written without CSV
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            output_dir = str(self.output_dir)
            output_methods = [OutputMethod.CSV]

        with _codecarbon_muted() as records:
            tracker = _tracker_class()(
                country_iso_code=self.country_iso_code,
                project_name="smartfed",
                measure_power_secs=self.measure_power_secs,
                output_methods=output_methods,
                output_dir=output_dir,
                output_file=CSV_FILE_NAME,
                api_call_interval=-1,  # outputs only at stop()
                emissions_endpoint=None,
                allow_multiple_runs=True,  # no lock file in the temp dir
                tracking_mode="machine",
                log_level="error",
            )
            if getattr(tracker, "_scheduler", None) is None:  # __init__ is @suppress'ed too
                raise RuntimeError(_failure_reason(records, "tracker construction failed"))
            # Offline must mean offline: a token from env/config would call Electricity Maps.
            tracker._electricitymaps_api_token = None
            # __init__ re-adds a StreamHandler and sets ERROR; keep capturing during start().
            cc = logging.getLogger(_CC_LOGGER)
            cc.handlers = [h for h in cc.handlers if isinstance(h, _Capture)]
            cc.setLevel(logging.WARNING)
            tracker.start()
            if getattr(tracker, "_start_time", None) is None:
                reason = _failure_reason(records, "tracker did not start")
                _join_timers([tracker._scheduler, tracker._scheduler_monitor_power])
                raise RuntimeError(reason)
            self._tracker = tracker
            self._state = "running"
            self._method, self._quality = _describe(tracker, version, self.country_iso_code)
            self._check_country()

    def _check_country(self) -> None:
        try:
            from codecarbon.input import DataSource

            known = self.country_iso_code in DataSource().get_global_energy_mix_data()
        except Exception:  # the check is a courtesy; energy does not depend on it
            return
        if not known:
            log.warning(
                "energy: country_iso_code %r is not in CodeCarbon's table; kWh are unaffected, "
                "CO2eq in CodeCarbon's CSV will not be meaningful",
                self.country_iso_code,
            )

    def _measure(self) -> float:
        tracker = self._tracker
        with tracker._smartfed_measure_lock:
            tracker._measure_power_and_energy()
            kwh = float(tracker._total_energy.kWh)
        if not math.isfinite(kwh) or kwh < 0:
            raise ValueError(f"CodeCarbon reported {kwh!r} kWh")
        if self._last_kwh is not None:
            kwh = max(kwh, self._last_kwh)
        self._last_kwh = kwh
        return kwh

    def _fail(self, reason: str) -> None:
        """Become a no-op meter: shut CodeCarbon down, log one warning line."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            schedulers = [
                getattr(tracker, "_scheduler", None),
                getattr(tracker, "_scheduler_monitor_power", None),
            ]
            try:
                with _codecarbon_muted():
                    tracker.stop()
            except Exception:  # already failing; cleanup is best effort
                pass
            _join_timers(schedulers)
        self._state = "unavailable"
        self._quality = "unavailable"
        self._final_kwh = None
        self._method = f"energy not tracked: {reason}"
        log.warning("energy: %s; energy figures will be null", reason)
