"""Samples: (series, time, value) points that feed baselines and the console's graphs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pipectl.model import Sample
from pipectl.store.base import DB


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
