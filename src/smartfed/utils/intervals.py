"""Confidence intervals (no torch): shared by ``smartfed eval`` and the results library."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval of a proportion (95 % for z = 1.96): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0/n, where small models sit."""
    if n == 0:
        return None
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]
