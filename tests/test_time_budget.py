"""The default suite's time budget (tests/time_budget.py): an unmarked test over the budget
fails with a line saying what to do; a marked one, one within the budget, one whose fixture is
slow and one that only waits (wall time, no CPU) pass."""

from __future__ import annotations

import pytest

from tests.time_budget import BUDGET_ENV

PLANTED = """
import time
import pytest

def busy(seconds):  # CPU time, however loaded the machine is
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass

def test_quick():
    pass

def test_over_budget():
    busy(0.15)

def test_waiting_is_not_slowness():
    time.sleep(0.15)

@pytest.mark.slow
def test_over_budget_but_slow():
    busy(0.15)

@pytest.mark.integration
def test_over_budget_but_integration():
    busy(0.15)

@pytest.fixture
def slow_fixture():
    busy(0.15)

def test_slow_setup_is_not_the_test(slow_fixture):
    pass
"""


# Plugins the planted session does not need (they cost seconds on a loaded machine).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")


@pytest.fixture
def planted(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(
        "from tests.time_budget import (pytest_configure, pytest_runtest_call,\n"
        "    pytest_runtest_makereport)\n"
    )
    pytester.makeini(
        "[pytest]\nmarkers =\n    slow: slow\n    integration: real model\n    gpu: gpu\n"
    )
    pytester.makepyfile(test_planted=PLANTED)
    return pytester


def test_an_unmarked_test_over_budget_fails(planted, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "0.05")
    result = planted.runpytest(*QUIET)
    result.assert_outcomes(passed=5, failed=1)
    expected = "*test_over_budget took * s CPU) in its call, over the 0.05 s budget*mark it*"
    result.stdout.fnmatch_lines([expected])


@pytest.mark.parametrize("budget", ["30", "0"])  # 0: no budget
def test_a_larger_budget_or_none_lets_it_pass(planted, monkeypatch, budget):
    monkeypatch.setenv(BUDGET_ENV, budget)
    planted.runpytest(*QUIET).assert_outcomes(passed=6)


def test_a_bad_budget_is_a_usage_error(planted, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "soon")
    result = planted.runpytest(*QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{BUDGET_ENV}='soon'*"])
