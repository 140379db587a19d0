"""The measured memory of a step (smartfed.models.memory_probe), shared by step_cost.py and
memory_check.py: a step that touches 64 MiB is seen growing by about that, one that allocates
nothing is not, and a disabled probe runs the step without a figure."""

from __future__ import annotations

import pytest
import torch

from smartfed.models.memory_probe import LinuxRssProbe, MemoryProbe, memory_probe

MIB = 2**20
CPU = torch.device("cpu")


@pytest.mark.skipif(not LinuxRssProbe.available(), reason="needs Linux /proc/self/clear_refs")
def test_cpu_probe_sees_what_a_step_keeps_alive():
    probe = memory_probe(CPU)
    assert isinstance(probe, LinuxRssProbe)
    kept: list[torch.Tensor] = []
    grown = probe.measure(lambda: kept.append(torch.ones(16 * MIB)))  # 64 MiB written
    assert grown is not None and 60 * MIB <= grown.growth <= 96 * MIB
    assert grown.before > 0
    idle = probe.measure(lambda: None)
    assert idle is not None and idle.growth < 16 * MIB


def test_disabled_probe_runs_the_step_and_measures_nothing():
    calls: list[int] = []
    probe = memory_probe(CPU, enabled=False)
    assert type(probe) is MemoryProbe and probe.kind == "none"
    assert probe.measure(lambda: calls.append(1)) is None and calls == [1]
