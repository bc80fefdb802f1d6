"""Writing APES rows for check tests: aggregates are what the checks see, so only the columns a
check reads get meaningful values."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg


def naive_utc(when: datetime) -> datetime:
    """APES's `timestamp without time zone` columns hold UTC wall-clock time."""
    return when.astimezone(UTC).replace(tzinfo=None)


async def add_rule_performance(
    conn: asyncpg.Connection,
    times: Sequence[datetime],
    *,
    scores: Sequence[float | None] | None = None,
    exec_ms: Sequence[int | None] | None = None,
    rule_ids: Sequence[str] | None = None,
) -> None:
    n = len(times)
    await conn.execute(
        """
        INSERT INTO public.rule_performance
            (rule_id, rule_name, improvement_score, execution_time_ms, created_at)
        SELECT r, 'rule ' || r, s, e, t
        FROM unnest($1::text[], $2::float8[], $3::int[], $4::timestamp[]) AS u(r, s, e, t)
        """,
        list(rule_ids or ["clarity_rule"] * n),
        list(scores or [0.7] * n),
        list(exec_ms or [120] * n),
        [naive_utc(t) for t in times],
    )


async def add_feedback(
    conn: asyncpg.Connection,
    times: Sequence[datetime],
    *,
    ratings: Sequence[int | None] | None = None,
    applied_rules: Sequence[object] | None = None,
) -> None:
    n = len(times)
    rules = applied_rules or [[{"rule_id": "clarity_rule", "rule_name": "Clarity"}]] * n
    await conn.execute(
        """
        INSERT INTO public.user_feedback
            (original_prompt, improved_prompt, user_rating, applied_rules, created_at)
        SELECT 'p', 'q', r, a::jsonb, t
        FROM unnest($1::int[], $2::text[], $3::timestamp[]) AS u(r, a, t)
        """,
        list(ratings or [4] * n),
        [json.dumps(a) for a in rules],
        [naive_utc(t) for t in times],
    )


async def add_sessions(
    conn: asyncpg.Connection,
    times: Sequence[datetime],
    levels: Sequence[str | None],
    *,
    response_ms: Sequence[int] | None = None,
) -> None:
    n = len(times)
    await conn.execute(
        """
        INSERT INTO public.prompt_improvement_sessions
            (original_prompt, enhanced_prompt, applied_rules, response_time_ms,
             cache_hit_level, created_at)
        SELECT 'p', 'q', '[]'::jsonb, r, l, t
        FROM unnest($1::int[], $2::text[], $3::timestamptz[]) AS u(r, l, t)
        """,
        list(response_ms or [80] * n),
        list(levels),
        list(times),
    )
