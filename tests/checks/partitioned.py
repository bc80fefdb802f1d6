"""`rule_performance` partitioned by month (declarative partitioning), as a grown APES runs it.

The columns, indexes and trigger are read from sql/apes/schema.sql; the primary key includes
the partition key (PostgreSQL requires it), indexes are declared once on the parent (each
partition gets its own), and a DEFAULT partition takes rows outside the monthly ones. The
materialized summary that reads the table is rebuilt by sql/apes/materialized.sql, as on a
fresh install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from typing import Any

import asyncpg

from pipectl.apes_sql import load_materialized
from pipectl.checks.sql import Query
from pipectl.sqlfiles import sql_dir
from tests.checks.explain import args_for


def _partitioned_table() -> str:
    """sql/apes/schema.sql's `rule_performance` (its columns, indexes and trigger, as
    written there), partitioned by month: the primary key gets the partition key, and a
    DEFAULT partition takes rows outside the monthly ones."""
    schema = (sql_dir() / "apes" / "schema.sql").read_text()
    table = re.search(r"CREATE TABLE rule_performance \((.*?)\n\);", schema, re.S)
    assert table is not None, "schema.sql creates rule_performance"
    columns = table.group(1)
    assert "id SERIAL PRIMARY KEY," in columns, "rule_performance's key changed: adapt this"
    columns = columns.replace("id SERIAL PRIMARY KEY,", "id SERIAL,")
    dependents = re.findall(
        r"CREATE (?:INDEX|TRIGGER) [^;]*?\bON rule_performance\b[^;]*;", schema, re.S
    )
    assert len(dependents) >= 2, "schema.sql indexes rule_performance"
    return "\n".join(
        [
            "DROP MATERIALIZED VIEW IF EXISTS public.rule_effectiveness_summary;",
            "DROP VIEW IF EXISTS public.rule_effectiveness_summary;",
            "DROP TABLE public.rule_performance;",
            f"CREATE TABLE rule_performance ({columns},\n    PRIMARY KEY (id, created_at)\n)"
            " PARTITION BY RANGE (created_at);",
            *dependents,
            "CREATE TABLE rule_performance_default PARTITION OF rule_performance DEFAULT;",
        ]
    )


def partition_name(month: date) -> str:
    return f"rule_performance_{month:%Y_%m}"


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months(first: date, last: date) -> list[date]:
    """The first day of every month from `first`'s month to `last`'s, both included."""
    out = []
    current = first.replace(day=1)
    while current <= last:
        out.append(current)
        current = next_month(current)
    return out


async def partition_rule_performance(conn: asyncpg.Connection, first: date, last: date) -> None:
    """Replace the (empty) plain table with the partitioned one, a partition per month from
    `first` to `last`, and rebuild the summary that reads it."""
    async with conn.transaction():
        await conn.execute(_partitioned_table())
        for month in months(first, last):
            following = next_month(month)
            await conn.execute(
                f"CREATE TABLE public.{partition_name(month)} PARTITION OF public.rule_performance"
                f" FOR VALUES FROM ('{month.isoformat()}') TO ('{following.isoformat()}')"
            )
    await load_materialized(conn)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def plan_of(
    conn: asyncpg.Connection, query: Query, relation: str, *, generic: bool
) -> dict[str, Any]:
    """The plan of `query` as a prepared statement executes it: a custom plan (the values
    known when planning) or the generic plan a prepared statement switches to after five
    runs (partitions pruned when the executor starts)."""
    args = await args_for(conn, query, relation)
    literals = [await conn.fetchval("SELECT quote_nullable($1::text)", str(a)) for a in args]
    mode = "force_generic_plan" if generic else "force_custom_plan"
    await conn.execute(f"SET plan_cache_mode = {mode}")
    await conn.execute(f"PREPARE probe AS {query.sql}")
    try:
        execute = f"EXECUTE probe({', '.join(literals)})" if literals else "EXECUTE probe"
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {execute}")
    finally:
        await conn.execute("DEALLOCATE probe")
        await conn.execute("RESET plan_cache_mode")
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return plan


def scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(node type, relation) of every scan of a rule_performance partition in the plan."""
    return [
        (node["Node Type"], node["Relation Name"])
        for node in _nodes(plan)
        if str(node.get("Relation Name", "")).startswith("rule_performance")
    ]
