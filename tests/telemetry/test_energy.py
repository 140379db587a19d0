"""EnergyMeter: real CodeCarbon offline tracker on this machine, plus its failure modes."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from smartfed.telemetry import energy
from smartfed.telemetry.energy import CSV_FILE_NAME, EnergyMeter


def busy(seconds: float) -> None:
    a = np.random.default_rng(0).random((256, 256))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = np.tanh(a @ a)


def new_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty cwd, with no CodeCarbon config or env leaking in."""
    for key in list(os.environ):
        if key.lower().startswith("codecarbon_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.codecarbon.config
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts


@pytest.fixture
def cc_output() -> Iterator[io.StringIO]:
    """Whatever the codecarbon logger would print to the terminal."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    cc = logging.getLogger("codecarbon")
    cc.addHandler(handler)
    yield stream
    cc.removeHandler(handler)


def test_real_tracker_measures_busy_loop(
    in_tmp: Path, no_network: list[object], cc_output: io.StringIO
) -> None:
    before = set(threading.enumerate())
    meter = EnergyMeter()
    assert meter.start() is meter
    assert meter.available

    busy(1.2)
    first = meter.cumulative_kwh()
    assert isinstance(first, float) and first > 0
    time.sleep(0.3)  # far shorter than measure_power_secs (15 s): the read must force a sample
    second = meter.cumulative_kwh()
    assert isinstance(second, float) and second > first

    total = meter.stop()
    assert isinstance(total, float) and total >= second
    assert meter.stop() == total  # idempotent
    assert meter.cumulative_kwh() == total  # reads after stop give the final total
    json.dumps({"energy_kwh": total}, allow_nan=False)

    assert new_threads(before) == [], "CodeCarbon threads left alive after stop()"
    assert list(in_tmp.iterdir()) == [], "output_dir=None must not write files"
    assert no_network == [], f"network attempted: {no_network}"
    assert cc_output.getvalue() == "", "CodeCarbon printed to the terminal"

    method = meter.method
    assert method.startswith("CodeCarbon ") and "offline (USA" in method
    assert "\n" not in method
    assert meter.quality in ("estimated", "partly measured")
    if meter.quality == "estimated":
        assert "estimated, not measured" in method


def test_reads_are_monotone(in_tmp: Path) -> None:
    with EnergyMeter(measure_power_secs=0.2) as meter:  # background sampling races reads
        values = []
        for _ in range(6):
            time.sleep(0.1)
            values.append(meter.cumulative_kwh())
    assert all(isinstance(v, float) for v in values)
    assert values == sorted(values)
    assert meter.stop() >= values[-1]


def test_offset_is_added(in_tmp: Path) -> None:
    before = set(threading.enumerate())
    with EnergyMeter(offset_kwh=2.5) as meter:
        time.sleep(0.2)
        value = meter.cumulative_kwh()
        assert value is not None and 2.5 < value < 2.6
    total = meter.stop()
    assert total is not None and total >= value
    assert new_threads(before) == []


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_offset_must_be_finite_non_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="offset_kwh"):
        EnergyMeter(offset_kwh=bad)


def test_country_code_is_validated_and_normalised() -> None:
    with pytest.raises(ValueError, match="country_iso_code"):
        EnergyMeter(country_iso_code="FR")
    assert EnergyMeter(country_iso_code="fra", enabled=False).country_iso_code == "FRA"


def test_disabled_meter_is_a_noop(in_tmp: Path) -> None:
    before = set(threading.enumerate())
    with EnergyMeter(enabled=False, offset_kwh=1.0) as meter:
        assert meter.cumulative_kwh() is None
    assert meter.stop() is None
    assert meter.stop() is None
    assert not meter.available and meter.quality == "unavailable"
    assert "disabled" in meter.method
    assert new_threads(before) == []
    assert list(in_tmp.iterdir()) == []


def test_read_before_start_is_none() -> None:
    meter = EnergyMeter()
    assert meter.cumulative_kwh() is None
    assert meter.stop() is None


def test_output_dir_gets_codecarbon_csv(in_tmp: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "energy"  # created by the meter
    with EnergyMeter(output_dir=out) as meter:
        time.sleep(0.1)
    assert (out / CSV_FILE_NAME).is_file()
    header = (out / CSV_FILE_NAME).read_text().splitlines()[0]
    assert "energy_consumed" in header
    assert list(in_tmp.iterdir()) == []
    assert meter.stop() is not None


class _RaisingTracker:
    _scheduler = _scheduler_monitor_power = None

    def __init__(self, **kwargs: object) -> None:
        self._scheduler = object()

    def start(self) -> None:
        raise OSError("no power for you")


class _SilentlyFailingTracker(_RaisingTracker):
    """Like CodeCarbon's @suppress'ed start(): logs the exception, returns, never started."""

    _start_time = None

    def start(self) -> None:
        try:
            raise PermissionError("RAPL file not readable")
        except PermissionError:
            logging.getLogger("codecarbon").warning("graceful shutdown", exc_info=True)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [(_RaisingTracker, "OSError: no power for you"), (_SilentlyFailingTracker, "RAPL file")],
)
def test_start_failure_gives_noop_meter_and_one_warning(
    cls: type,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cc_output: io.StringIO,
) -> None:
    monkeypatch.setattr(energy, "_tracker_class", lambda: cls)
    with caplog.at_level(logging.WARNING, logger="smartfed.telemetry.energy"):
        meter = EnergyMeter().start()
    assert meter.cumulative_kwh() is None
    assert meter.stop() is None
    assert reason in meter.method
    warnings = [r for r in caplog.records if r.name == "smartfed.telemetry.energy"]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()
    assert cc_output.getvalue() == ""


def test_measurement_failure_mid_run(in_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    meter = EnergyMeter().start()
    assert meter.cumulative_kwh() is not None

    def broken() -> None:
        raise RuntimeError("sensor gone")

    meter._tracker._measure_power_and_energy = broken
    with caplog.at_level(logging.WARNING, logger="smartfed.telemetry.energy"):
        assert meter.cumulative_kwh() is None
    assert "sensor gone" in caplog.text
    assert meter.cumulative_kwh() is None
    assert meter.stop() is None
    assert new_threads(before) == []


# --------------------------------------------------------------- the CodeCarbon version gate


@pytest.mark.parametrize("version", ["3.3.2", "3.3.0", "3.3"])
def test_tested_codecarbon_series_passes(version: str) -> None:
    assert energy.untested_codecarbon(version) is None


@pytest.mark.parametrize("version", ["3.4.0", "3.2.9", "4.0.0", "3.30.1", "nightly"])
def test_untested_codecarbon_is_one_line(version: str) -> None:
    reason = energy.untested_codecarbon(version)
    assert reason is not None and "\n" not in reason
    assert f"CodeCarbon {version} is untested" in reason and "codecarbon>=3.3,<3.4" in reason


def test_installed_codecarbon_is_tested() -> None:
    """The environment the suite runs in is one the internals were checked against."""
    assert energy.untested_codecarbon() is None


def test_untested_codecarbon_gives_noop_meter_and_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(energy.importlib.metadata, "version", lambda name: "3.4.0")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tracker must not be built on an untested CodeCarbon")

    monkeypatch.setattr(energy, "_tracker_class", never)
    with caplog.at_level(logging.WARNING, logger="smartfed.telemetry.energy"):
        meter = EnergyMeter().start()
    assert not meter.available and meter.quality == "unavailable"
    assert meter.cumulative_kwh() is None and meter.stop() is None
    assert "CodeCarbon 3.4.0 is untested" in meter.method
    warnings = [r for r in caplog.records if r.name == "smartfed.telemetry.energy"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
