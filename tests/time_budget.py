"""The default suite's time budget per test: an unmarked test whose call (the test body, not its
fixtures) takes longer than the budget fails, so later work cannot quietly push the default
suite past its budget. Longer means both: wall time over the budget *and* CPU time (this
process's threads and the subprocesses it waited for) over it. On a machine shared with other
jobs the wall time of a cheap test stretches several-fold while its CPU time does not, so the
check fails what is slow, not what was kept waiting. A test that needs longer is marked
``integration`` (end to end: the real default base model, or whole runs) or ``slow`` (excluded
from the default suite); ``gpu`` tests run only on a GPU machine, deliberately, and are exempt.

The budget is :data:`DEFAULT_BUDGET_S` seconds; ``SMARTFED_TEST_BUDGET_S`` sets another (a slow
or loaded machine), ``0`` turns the check off. Imported by tests/conftest.py, which makes its
hook active.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

BUDGET_ENV = "SMARTFED_TEST_BUDGET_S"
DEFAULT_BUDGET_S = 20.0
EXEMPT_MARKERS = ("integration", "slow", "gpu")
_BUDGET = pytest.StashKey[float | None]()
_CPU_S = pytest.StashKey[float]()


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def budget_s() -> float | None:
    """The budget in seconds, or None when the check is off."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_S
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"{BUDGET_ENV}={text!r}: expected seconds (0: no budget)") from None
    return value if value > 0 else None


def pytest_configure(config: pytest.Config) -> None:
    # Read once per session: a bad value stops it before any test, and a test that changes the
    # variable (tests/test_time_budget.py, for the sessions it starts) does not change its own.
    config.stash[_BUDGET] = budget_s()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    start = _cpu_s()
    yield
    item.stash[_CPU_S] = _cpu_s() - start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.passed:
        return
    budget = item.config.stash.get(_BUDGET, DEFAULT_BUDGET_S)
    cpu = item.stash.get(_CPU_S, call.duration)
    if budget is None or min(call.duration, cpu) <= budget:
        return
    if any(item.get_closest_marker(name) for name in EXEMPT_MARKERS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} took {call.duration:.1f} s ({cpu:.1f} s CPU) in its call, over the "
        f"{budget:g} s budget of a "
        "test in the default suite: mark it @pytest.mark.integration (real default model) or "
        f"@pytest.mark.slow, or make it faster ({BUDGET_ENV} sets the budget on a slow machine)"
    )
