"""Probes on a table partitioned by month against the same rows in a plain table.

    python -m bench.partitions [--dsn postgresql://...] [--rows 1200000] [--repeats 5]

One scratch database with `rule_performance`'s time column and index three times, the same
rows in each, spread evenly over the year before now: `rp_plain` (one table), `rp_part`
(declarative partitioning by month: a partition per month of that year and the next month, and
a DEFAULT one) and `rp_part_nodefault` (the same without the DEFAULT partition).
For pipectl's own probe SQL (freshness, a 1 h volume window, a 24 h quality window) it prints
what EXPLAIN (ANALYZE, BUFFERS) says: shared buffers touched, rows read by the scans, which
relations were scanned, and the median execution time over `--repeats` runs. Figures, never
pass/fail. The server: --dsn, else PIPECTL_TEST_DSN (a superuser's DSN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.common import Section
from pipectl.checks.catalog import load_catalog
from pipectl.checks.freshness import FreshnessCheck
from pipectl.checks.freshness import query as freshness_query
from pipectl.checks.quality import QualityCheck
from pipectl.checks.quality import query as quality_query
from pipectl.checks.sql import Query
from pipectl.checks.volume import VolumeCheck
from pipectl.checks.volume import query as volume_query
from pipectl.identifiers import Relation

SCRATCH = "pipectl_bench_partitions"
PARTITIONED = ("rp_part", "rp_part_nodefault")
"""Partitioned by month, with a DEFAULT partition and without one."""


def _months(first: date, last: date) -> list[date]:
    out, current = [], first.replace(day=1)
    while current <= last:
        out.append(current)
        current = date(current.year + current.month // 12, current.month % 12 + 1, 1)
    return out


async def _build(conn: asyncpg.Connection, rows: int, now: datetime) -> None:
    columns = (
        "id bigserial, rule_id varchar(50) NOT NULL, improvement_score float8,"
        " confidence_level float8, created_at timestamp NOT NULL"
    )
    await conn.execute(f"CREATE TABLE rp_plain ({columns})")
    start = now - timedelta(days=365)
    for table in PARTITIONED:
        await conn.execute(f"CREATE TABLE {table} ({columns}) PARTITION BY RANGE (created_at)")
        # One month ahead, as a partition manager keeps it.
        for month in _months(start.date(), (now + timedelta(days=31)).date()):
            following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
            await conn.execute(
                f"CREATE TABLE {table}_{month:%Y_%m} PARTITION OF {table}"
                f" FOR VALUES FROM ('{month}') TO ('{following}')"
            )
    await conn.execute("CREATE TABLE rp_part_default PARTITION OF rp_part DEFAULT")
    fill = (
        "INSERT INTO {table} (rule_id, improvement_score, confidence_level, created_at)"
        " SELECT 'clarity_rule', (i % 100) / 100.0, 0.8,"
        " $1::timestamp - (i * 365.0 * 86400 / $2) * interval '1 second'"
        " FROM generate_series(1, $2::int) AS i"
    )
    naive = now.astimezone(UTC).replace(tzinfo=None)
    for table in ("rp_plain", *PARTITIONED):
        await conn.execute(fill.format(table=table), naive, rows)
        await conn.execute(f"CREATE INDEX ON {table} (created_at)")
        await conn.execute(f"VACUUM ANALYZE {table}")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _measure(
    conn: asyncpg.Connection, query: Query, table: str, repeats: int
) -> tuple[int, int, int, float]:
    """(shared buffers touched, rows the scans returned, relations scanned, median ms)."""
    relation = Relation("public", table)
    catalog = await load_catalog(conn, [relation])
    args = query.args(catalog.table(relation))
    times, plan = [], {}
    for _ in range(repeats):
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query.sql}", *args)
        found = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        times.append(float(found["Execution Time"]))
        plan = found["Plan"]
    scanned = [
        n for n in _nodes(plan) if "Relation Name" in n and float(n.get("Actual Loops", 0)) > 0
    ]
    buffers = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))
    rows = sum(int(n["Actual Rows"]) * int(n["Actual Loops"]) for n in scanned)
    return buffers, rows, len({n["Relation Name"] for n in scanned}), statistics.median(times)


def _probes(table: str, now: datetime) -> dict[str, Query]:
    base = {"table": f"public.{table}"}
    fresh = FreshnessCheck.model_validate(
        base
        | {
            "name": "f",
            "kind": "freshness",
            "column": "created_at",
            "warn_after": "15m",
            "error_after": "1h",
        }
    )
    volume = VolumeCheck.model_validate(
        base | {"name": "v", "kind": "volume", "column": "created_at", "window": "1h"}
    )
    quality = QualityCheck.model_validate(
        base
        | {
            "name": "q",
            "kind": "quality",
            "time_column": "created_at",
            "window": "24h",
            "rule": {"type": "range", "column": "improvement_score", "min": 0, "max": 1},
        }
    )
    return {
        "freshness max(created_at)": freshness_query(fresh, None),
        "volume, 1 h window": volume_query(volume, now),
        "quality, 24 h window": quality_query(quality, now),
    }


HEADER = ["probe", "table", "buffers", "rows scanned", "relations", "ms"]


async def run(dsn: str, rows: int, repeats: int, scratch_name: str | None = None) -> Section:
    """Build the three tables in a scratch database of the server `dsn` names (a superuser's
    DSN), measure every probe on each, drop the database; the figures as one Section."""
    # A name of its own: other runs may use the same server at the same time.
    scratch_name = scratch_name or f"{SCRATCH}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE DATABASE {scratch_name}")
    finally:
        await admin.close()
    scratch = urlunsplit(urlsplit(dsn)._replace(path=f"/{scratch_name}"))
    try:
        conn = await asyncpg.connect(scratch)
        try:
            version = str(await conn.fetchval("SELECT version()")).split(" on ")[0]
            now = datetime.now(UTC).replace(microsecond=0)
            await _build(conn, rows, now)
            table_rows = []
            for table in ("rp_plain", *PARTITIONED):
                for name, query in _probes(table, now).items():
                    buffers, read, relations, median = await _measure(conn, query, table, repeats)
                    table_rows.append(
                        [name, table, str(buffers), f"{read:,}", str(relations), f"{median:.3f}"]
                    )
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {scratch_name} WITH (FORCE)")
        finally:
            await admin.close()
    return Section(
        "partitioned tables: pipectl's probes on a plain and a partitioned table",
        [],
        [
            f"{version}; {rows:,} rows over a year, the same rows in each table; rp_part and"
            " rp_part_nodefault are partitioned by month (13 months and the next one), rp_part"
            " with a DEFAULT partition; EXPLAIN (ANALYZE, BUFFERS), median of"
            f" {repeats} executions; buffers and rows from the last one.",
            "The baseline of each partitioned row is the plain table's row of the same probe"
            ' (same rows, same run). docs/operating.md, "Growing past one database server",'
            " reads them.",
        ],
        tables=[("probes (EXPLAIN ANALYZE, BUFFERS)", HEADER, table_rows)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("PIPECTL_TEST_DSN"))
    parser.add_argument("--rows", type=int, default=1_200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn (a superuser's) or set PIPECTL_TEST_DSN")
    asyncio.run(run(args.dsn, args.rows, args.repeats)).print()


if __name__ == "__main__":
    main()
