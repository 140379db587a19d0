"""The results library and the package root load without torch: the result scripts of
benchmarks/ and ``smartfed report`` read results on a machine (or in a second) without the
model stack. Each import runs in a fresh interpreter, since this one has torch loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
TORCH_FREE = [
    "smartfed",
    "smartfed.bench.results",
    "smartfed.bench.stats",
    "smartfed.bench.layout",
    "smartfed.bench.tables",
    "smartfed.bench.question",
]


def _loads_torch(module: str, prelude: str = "") -> bool:
    code = f"{prelude}import sys, {module}; print('torch' in sys.modules)"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip() == "True"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_no_torch(module):
    assert not _loads_torch(module)


def test_the_check_sees_torch():
    """The check can fail: a module that loads torch is seen doing it (a stand-in torch, so
    the check costs no real torch import)."""
    prelude = "import sys, types; sys.modules['torch'] = types.ModuleType('torch'); "
    assert _loads_torch("json", prelude)
