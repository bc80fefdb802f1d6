"""The floors (warn below, fail below) of a cache check, by source.

Here rather than in the check kind (`pipectl.checks.cache`, which re-exports them) because the
console reads them for published definitions, and importing any check module registers every
check kind with pydantic: the console's first screen would pay for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def floors(source: str, warn_below: float | None, fail_below: float | None) -> tuple[float, float]:
    """Warn and fail floors of a cache check of `source`; unset ones take the defaults."""
    warn, fail = (0.95, 0.90) if source == "postgres" else (0.80, 0.50)
    return (
        warn_below if warn_below is not None else warn,
        fail_below if fail_below is not None else fail,
    )


def published_floors(source: str, definition: Mapping[str, Any]) -> tuple[float, float]:
    """The floors of a cache check as published in `pipectl.checks.definition` (for readers
    of the database, such as the console, that have no config)."""
    return floors(
        source, _ratio(definition.get("warn_below")), _ratio(definition.get("fail_below"))
    )


def _ratio(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
