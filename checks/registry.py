"""Check kinds by name. Adding a kind: write its module (config model, probe, evaluation and a
`KIND`), then list it here.

Importing this module (importing `pipectl.checks` does) also registers each kind's config model
with `pipectl.config`, which cannot import the kinds itself, so that configs naming them parse.
"""

from __future__ import annotations

from typing import Any

from pipectl.checks import audit, cache, freshness, metric, quality, schema, version, volume
from pipectl.checks.base import KindSpec
from pipectl.config import CHECK_KINDS

KINDS: dict[str, KindSpec[Any]] = {}


def register(spec: KindSpec[Any]) -> None:
    """Make a kind known to the engine and to config parsing."""
    CHECK_KINDS.register(spec.model)
    KINDS[spec.kind] = spec


def unregister(kind: str) -> None:
    """Forget a kind (tests that register one of their own)."""
    CHECK_KINDS.unregister(kind)
    KINDS.pop(kind, None)


for spec in (
    freshness.KIND,
    volume.KIND,
    metric.KIND,
    quality.KIND,
    schema.KIND,
    cache.KIND,
    version.KIND,
    audit.KIND,
):
    register(spec)
