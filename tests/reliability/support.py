"""Helpers of the fault scenarios: config bodies, requests, waiting on rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from pipectl import store
from pipectl.db import _init_connection
from pipectl.identifiers import quote_ident
from pipectl.model import Request, RequestKind
from pipectl.request_args import RequestArgs
from tests.helpers import wait_for

SUMMARY_STEPS = """
[defaults]
retry_backoff = "200ms"
retry_backoff_max = "1s"

[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
every = "1s"

[[steps]]
name = "user_satisfaction_summary"
kind = "matview"
relation = "public.user_satisfaction_summary"
depends_on = ["rule_effectiveness_summary"]
every = "1s"
"""

SLOW_SUMMARY_STEP = """
[[steps]]
name = "slow_summary"
kind = "matview"
relation = "public.slow_summary"
"""

STEPS = ("rule_effectiveness_summary", "user_satisfaction_summary")

FRESHNESS_CHECK = """
[[checks]]
name = "rule_performance_freshness"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "15m"
error_after = "1h"
"""


def freshness_check(every: str) -> str:
    """The freshness check of rule_performance, run every `every`."""
    return FRESHNESS_CHECK + f'every = "{every}"\n'


async def create_slow_summary(dsn: str, seconds: float) -> None:
    """A materialized summary whose refresh takes `seconds` (a one-row CTE sleeps once)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""
            CREATE MATERIALIZED VIEW public.slow_summary AS
            WITH gate AS MATERIALIZED (SELECT pg_sleep({float(seconds)}))
            SELECT r.rule_id, count(*) AS uses
            FROM public.rule_performance r, gate GROUP BY r.rule_id;
            CREATE UNIQUE INDEX slow_summary_key ON public.slow_summary (rule_id);
            """
        )
    finally:
        await conn.close()


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, timeout=10)
    await _init_connection(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def file_request(
    dsn: str, kind: RequestKind, target: str, args: RequestArgs | None = None
) -> Request:
    async with connected(dsn) as conn:
        return await store.create_request(conn, kind, target, "reliability test", args)


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    """One value, or None while the server is unreachable (for polling through outages)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return None
    try:
        return await conn.fetchval(sql, *args)
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


async def wait_request_done(dsn: str, request_id: int, timeout: float = 60) -> str:
    outcome: str = await wait_for(
        lambda: fetchval(
            dsn,
            "SELECT outcome FROM pipectl.requests WHERE id = $1 AND done_at IS NOT NULL",
            request_id,
        ),
        timeout=timeout,
        interval=0.1,
    )
    return outcome


async def wait_run_status(
    dsn: str, step: str, status: str, timeout: float = 30, after: int = 0
) -> int:
    """The id of the newest run of `step` (newer than run `after`) in `status`."""
    run_id: int = await wait_for(
        lambda: fetchval(
            dsn,
            "SELECT id FROM pipectl.runs WHERE step = $1 AND status = $2 AND id > $3"
            " ORDER BY id DESC LIMIT 1",
            step,
            status,
            after,
        ),
        timeout=timeout,
        interval=0.05,
    )
    return run_id


async def schema_text_hits(dsn: str, needles: list[str]) -> list[str]:
    """`table.column: needle` for every text-like column of the pipectl schema (text,
    varchar, json, jsonb, arrays) that contains one of `needles`, case-insensitively."""
    hits: list[str] = []
    async with connected(dsn) as conn:
        columns = await conn.fetch(
            """
            SELECT c.relname AS table_name, a.attname AS column_name
            FROM pg_attribute a
            JOIN pg_class c ON c.oid = a.attrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_type t ON t.oid = a.atttypid
            WHERE n.nspname = 'pipectl' AND c.relkind = 'r' AND a.attnum > 0
              AND NOT a.attisdropped
              AND (t.typcategory IN ('S', 'A') OR t.typname IN ('json', 'jsonb'))
            ORDER BY 1, 2
            """
        )
        lowered = [n.lower() for n in needles]
        for column in columns:
            table = f"pipectl.{quote_ident(column['table_name'])}"
            name = quote_ident(column["column_name"])
            found = await conn.fetch(
                f"SELECT DISTINCT needle.n FROM {table} AS t, unnest($1::text[]) AS needle(n)"
                f" WHERE strpos(lower(t.{name}::text), needle.n) > 0",
                lowered,
            )
            hits += [f"{column['table_name']}.{column['column_name']}: {r['n']}" for r in found]
    return hits
