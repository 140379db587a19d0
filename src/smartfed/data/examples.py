"""The one record type every dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One supervised example: a user prompt and the assistant response to learn.

    ``meta`` holds extra fields (answer, label, source, ...) that partitioners and evaluators use;
    values should be JSON-serialisable scalars so that partitions can be saved and reported.
    """

    prompt: str
    response: str
    meta: dict[str, Any] = field(default_factory=dict)
