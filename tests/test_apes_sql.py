"""The APES preset's SQL: upstream tables and views, and materialized summaries with the same
columns, on whichever server the suite runs against (CI runs PostgreSQL 15 and 18)."""

from __future__ import annotations

import asyncpg

from pipectl import migrate
from pipectl.sqlfiles import sql_dir
from tests.conftest import PgServer

APES = sql_dir() / "apes"


async def _columns(conn: asyncpg.Connection, relation: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        relation,
    )
    return [(r["attname"], r["type"]) for r in rows]


async def test_upstream_schema_then_materialized_summaries(
    empty_database: str, pg_server: PgServer
) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute((APES / "schema.sql").read_text())
        kinds = dict(
            await conn.fetch("SELECT relname, relkind FROM pg_class WHERE relname LIKE '%_summary'")
        )
        assert kinds == {"rule_effectiveness_summary": b"v", "user_satisfaction_summary": b"v"}
        upstream = {
            name: await _columns(conn, name)
            for name in ("rule_effectiveness_summary", "user_satisfaction_summary")
        }
        created = await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'user_feedback'::regclass AND attname = 'created_at'"
        )
        assert created == "timestamp without time zone"
        assert not await conn.fetchval(
            "SELECT attnotnull FROM pg_attribute"
            " WHERE attrelid = 'user_feedback'::regclass AND attname = 'user_rating'"
        )
        await migrate.upgrade(conn)
        await conn.execute((APES / "materialized.sql").read_text())
        await conn.execute((APES / "materialized.sql").read_text())  # idempotent
        for name, columns in upstream.items():
            assert (
                await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = $1", name) == b"m"
            )
            assert await _columns(conn, name) == columns, f"{name} must keep upstream's columns"
            await conn.execute(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {name}")
        if pg_server.version >= 17:
            assert await conn.fetchval(
                "SELECT has_table_privilege('pipectl_agent',"
                " 'public.rule_effectiveness_summary', 'MAINTAIN')"
            )
        else:
            # Before MAINTAIN (PostgreSQL 17) only the owner may refresh: the summaries stay
            # with their owner, listed for pipectl.refresh_summary(), which the agent calls.
            owner = await conn.fetchval(
                "SELECT pg_get_userbyid(relowner) FROM pg_class"
                " WHERE relname = 'rule_effectiveness_summary'"
            )
            assert owner == await conn.fetchval("SELECT current_user")
            listed = await conn.fetch(
                "SELECT view_name FROM pipectl.refreshable WHERE schema_name = 'public'"
                " ORDER BY view_name"
            )
            assert [r["view_name"] for r in listed] == list(sorted(upstream))
    finally:
        await conn.close()


async def test_materialized_summaries_fix_rules_used_and_match_upstream_otherwise(
    database: str,
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            """
            INSERT INTO rule_performance (rule_id, rule_name, prompt_type, improvement_score,
                                          confidence_level, execution_time_ms)
            VALUES ('clarity_rule', 'Clarity', 'code', 0.5, 0.9, 120),
                   ('clarity_rule', 'Clarity', 'chat', 0.7, 0.8, 80);
            INSERT INTO user_feedback (original_prompt, improved_prompt, user_rating, applied_rules)
            VALUES ('a', 'b', 5, '[{"rule_id": "clarity_rule", "rule_name": "Clarity"}]'),
                   ('a', 'b', 1, '[{"rule_id": "context_rule"}]'),
                   ('a', 'b', NULL, '[]');
            """
        )
        await conn.execute("REFRESH MATERIALIZED VIEW rule_effectiveness_summary")
        await conn.execute("REFRESH MATERIALIZED VIEW user_satisfaction_summary")
        rule = await conn.fetchrow("SELECT * FROM rule_effectiveness_summary")
        assert (rule["usage_count"], rule["prompt_types_count"]) == (2, 2)
        assert abs(rule["avg_improvement"] - 0.6) < 1e-9
        day = await conn.fetchrow("SELECT * FROM user_satisfaction_summary")
        assert (day["total_feedback"], day["positive_feedback"], day["negative_feedback"]) == (
            3,
            1,
            1,
        )
        assert day["avg_rating"] == 3.0
        assert day["rules_used"] == ["clarity_rule", "context_rule"]
    finally:
        await conn.close()
