"""Measured memory of one training step: the counterpart of :mod:`smartfed.models.memory`'s
estimate, shared by ``benchmarks/step_cost.py`` and ``benchmarks/memory_check.py``.

- CUDA: ``max_memory_allocated`` after the step minus ``memory_allocated`` before it, after
  ``reset_peak_memory_stats`` (the caching allocator's own count; cached blocks are emptied
  first, which does not change either count).
- CPU (Linux): freed heap is first returned to the kernel (glibc ``malloc_trim``) and the
  process's peak resident set reset (``/proc/self/clear_refs``); the growth is VmHWM after the
  step minus VmRSS before it. Other processes do not affect it; it is page-granular and holds
  the allocator's overheads.
- Elsewhere: not measured (:class:`MemoryProbe` runs the step and returns None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["CudaMemoryProbe", "LinuxRssProbe", "MemoryProbe", "StepMemory", "memory_probe"]


@dataclass(frozen=True)
class StepMemory:
    """What one measured step added (``growth``) on top of what was held before it."""

    growth: int
    before: int


class MemoryProbe:
    """Runs a step without measuring it; the base of the probes that do."""

    kind = "none"
    note = "not measured on this device"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def measure(self, step: Callable[[], object]) -> StepMemory | None:
        step()
        return None


class CudaMemoryProbe(MemoryProbe):
    kind = "cuda_allocator"
    note = "max_memory_allocated - memory_allocated before the step (CUDA caching allocator)"

    def measure(self, step: Callable[[], object]) -> StepMemory | None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        step()
        torch.cuda.synchronize(self.device)
        return StepMemory(torch.cuda.max_memory_allocated(self.device) - before, before)


class LinuxRssProbe(MemoryProbe):
    kind = "linux_peak_rss"
    note = "VmHWM - VmRSS before the step, after malloc_trim and a peak reset (/proc/self)"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))

    @staticmethod
    def available() -> bool:
        if not sys.platform.startswith("linux") or not ctypes.util.find_library("c"):
            return False
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim")

    @staticmethod
    def status() -> dict[str, int]:
        """VmRSS and VmHWM of this process, in bytes."""
        values = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":")
                    values[name] = int(value.split()[0]) * 1024  # kB
        return values

    def measure(self, step: Callable[[], object]) -> StepMemory | None:
        gc.collect()
        self.libc.malloc_trim(0)  # freed heap back to the kernel: the step must grow the RSS
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # VmHWM := VmRSS
        before = self.status()["VmRSS"]
        step()
        return StepMemory(max(self.status()["VmHWM"] - before, 0), before)


def memory_probe(device: torch.device, enabled: bool = True) -> MemoryProbe:
    """The probe that measures on ``device`` here (a no-op one when disabled or unsupported)."""
    if not enabled:
        return MemoryProbe(device)
    if device.type == "cuda":
        return CudaMemoryProbe(device)
    if device.type == "cpu" and LinuxRssProbe.available():
        return LinuxRssProbe(device)
    return MemoryProbe(device)
