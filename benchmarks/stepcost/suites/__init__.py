"""Every step-cost suite, one module each: importing this package imports them all, and each
registers itself (``@register`` in :mod:`stepcost.harness`). Adding a suite is adding a module
here (and its test in ``tests/test_step_cost_benchmark.py``)."""

from __future__ import annotations

import importlib
import pkgutil

from stepcost.harness import SUITE_CLASSES, Suite

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def all_suites() -> dict[str, type[Suite]]:
    """The registered suites by name, in their ``order``."""
    return dict(sorted(SUITE_CLASSES.items(), key=lambda item: (item[1].order, item[0])))
