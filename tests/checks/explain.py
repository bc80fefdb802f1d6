"""Plans of probe queries: proof that freshness and volume read an index, not the table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from pipectl.checks.catalog import load_catalog
from pipectl.checks.sql import Query
from pipectl.identifiers import Relation
from tests.checks.data import naive_utc


async def fill_rule_performance(
    conn: asyncpg.Connection, end: datetime, days: int = 30, every_minutes: int = 1
) -> None:
    """A row every `every_minutes` for `days` before `end`, then ANALYZE."""
    await conn.execute(
        """
        INSERT INTO public.rule_performance
            (rule_id, rule_name, improvement_score, execution_time_ms, created_at)
        SELECT 'clarity_rule', 'Clarity', 0.7, 100 + i % 300,
               $1::timestamp - i * $3::int * interval '1 minute'
        FROM generate_series(1, $2::int) AS i
        """,
        naive_utc(end),
        days * 24 * 60 // every_minutes,
        every_minutes,
    )
    await conn.execute("ANALYZE public.rule_performance")


async def args_for(conn: asyncpg.Connection, query: Query, relation: str) -> list[Any]:
    """The probe's parameters as the engine binds them for `relation`'s column types."""
    target = Relation.parse(relation)
    catalog = await load_catalog(conn, [target])
    return query.args(catalog.table(target), ZoneInfo("UTC"))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def assert_uses_index(
    conn: asyncpg.Connection, query: Query, relation: str, index: str
) -> None:
    args = await args_for(conn, query, relation)
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query.sql}", *args)
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    name = Relation.parse(relation).name
    nodes = list(_nodes(plan))
    scans = [n for n in nodes if n.get("Relation Name") == name]
    assert scans, f"no scan of {relation} in {plan}"
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], f"sequential scan: {plan}"
    assert any(n.get("Index Name") == index for n in nodes), plan
