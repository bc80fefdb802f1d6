"""Samples: (series, time, value) points that feed baselines and the console's graphs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pipectl.model import Sample
from pipectl.store.base import DB, instants


async def add_samples(db: DB, samples: Sequence[Sample]) -> None:
    """Insert; a point already stored for the same series and instant is replaced."""
    await db.executemany(
        """
        INSERT INTO pipectl.samples (series, ts, value, labels, source, anomaly)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (series, ts) DO UPDATE SET
            value = EXCLUDED.value, labels = EXCLUDED.labels,
            source = EXCLUDED.source, anomaly = EXCLUDED.anomaly
        """,
        [(s.series, s.ts, s.value, s.labels, s.source, s.anomaly) for s in samples],
    )


async def read_series(
    db: DB,
    series: str,
    since: datetime,
    *,
    until: datetime | None = None,
    live_only: bool = False,
    skip_anomalies: bool = False,
    limit: int = 10_000,
) -> list[Sample]:
    """Points of one series in time order. Baselines ask for live, non-anomalous points."""
    rows = await db.fetch(
        """
        SELECT series, ts, value, labels, source, anomaly FROM pipectl.samples
        WHERE series = $1 AND ts >= $2 AND ($3::timestamptz IS NULL OR ts < $3)
          AND (NOT $4 OR source = 'live') AND (NOT $5 OR NOT anomaly)
        ORDER BY ts DESC LIMIT $6
        """,
        series,
        since,
        until,
        live_only,
        skip_anomalies,
        limit,
    )
    return [Sample(**dict(r)) for r in reversed(rows)]


async def read_windows(
    db: DB,
    series: str,
    windows: Sequence[tuple[datetime, datetime]],
    *,
    baseline_only: bool = True,
    limit: int = 20_000,
) -> list[Sample]:
    """Points of one series inside any of the [low, high] windows, in time order.

    With `baseline_only`, only the points a baseline may learn from: 'live' or 'seed', not
    flagged as anomalies. Walks the (series, ts) primary key once per window.
    """
    if not windows:
        return []
    rows = await db.fetch(
        """
        SELECT s.series, s.ts, s.value, s.labels, s.source, s.anomaly
        FROM unnest($2::text[]::timestamptz[], $3::text[]::timestamptz[]) AS w(low, high)
        JOIN LATERAL (
            SELECT * FROM pipectl.samples
            WHERE series = $1 AND ts >= w.low AND ts <= w.high
              AND (NOT $4 OR (source IN ('live', 'seed') AND NOT anomaly))
        ) s ON true
        ORDER BY s.ts DESC
        LIMIT $5
        """,
        series,
        instants(low for low, _ in windows),
        instants(high for _, high in windows),
        baseline_only,
        limit,
    )
    seen: dict[datetime, Sample] = {}
    for r in reversed(rows):
        seen[r["ts"]] = Sample(**{**dict(r), "labels": _json(r["labels"])})
    return list(seen.values())


async def has_seed(db: DB, series: str) -> bool:
    """Whether history was ever reconstructed for this series (seeding happens once)."""
    found: bool = await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pipectl.samples WHERE series = $1 AND source = 'seed')",
        series,
    )
    return found


def _json(value: Any) -> Any:
    """jsonb as Python, whether or not the connection has pipectl's JSON codec."""
    return json.loads(value) if isinstance(value, str) else value
