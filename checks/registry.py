"""Check kinds by name. Adding a kind: write its module with a `KIND`, then list it here."""

from __future__ import annotations

from typing import Any

from pipectl.checks import cache, freshness, metric, quality, schema, volume
from pipectl.checks.base import KindSpec

KINDS: dict[str, KindSpec[Any]] = {
    spec.kind: spec
    for spec in (
        freshness.KIND,
        volume.KIND,
        metric.KIND,
        quality.KIND,
        schema.KIND,
        cache.KIND,
    )
}
