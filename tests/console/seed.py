"""A fixed, realistic incident for console tests and snapshots: steps with history (one paused,
one failing), checks in every state with results and samples, three cache sources with levels
and a dip, requests, events, one live agent. Every time is relative to NOW."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)

# A check an in-process agent knows by name (so it can silence it) without running it: the
# checks engine is not part of these tests.
CHECK_TOML = """
[[checks]]
name = "feedback_fresh"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
warn_after = "30m"
error_after = "2h"
enabled = false
"""
AGENT_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")

STEPS = [
    # name, kind, relation, sql, schedule, depends_on, next run, description
    (
        "rule_effectiveness_summary",
        "matview",
        "public.rule_effectiveness_summary",
        None,
        "every 5m",
        [],
        NOW + timedelta(minutes=2),
        "Per-rule effectiveness over the last 30 days",
    ),
    (
        "user_satisfaction_summary",
        "matview",
        "public.user_satisfaction_summary",
        None,
        "every 15m",
        ["rule_effectiveness_summary"],
        NOW + timedelta(minutes=7),
        "Daily user satisfaction over the last 90 days",
    ),
    (
        "rule_combinations_rollup",
        "sql",
        None,
        "SELECT apes_rollup_rule_combinations(interval '1 day')",
        "cron 0 * * * *",
        ["user_satisfaction_summary"],
        NOW + timedelta(minutes=60),
        "Hourly roll-up of rule combinations",
    ),
    (
        "session_cleanup",
        "sql",
        None,
        "DELETE FROM prompt_improvement_sessions\nWHERE created_at < now() - interval '90 days'",
        None,
        [],
        None,
        "",
    ),
]

CHECKS = [
    # name, kind, target, status, value, low, high, message, definition
    ("rule_performance_freshness", "freshness", "public.rule_performance", "ok", 95.0, None,
     900.0, "newest row 1.6m old", {}),
    ("request_latency_p95", "metric", "public.prompt_improvement_sessions", "warn", 240.0, None,
     200.0, "p95 240 ms above 200 ms", {}),
    ("avg_improvement_score", "metric", "public.rule_performance", "fail", 0.18, 0.4, 1.0,
     "0.18 below 0.2", {}),
    ("redis_hit_ratio", "cache", "redis", "ok", 0.931, 0.8, None, "93.1% of 1,204 lookups",
     {"source": "redis"}),
    ("app_cache_hit_ratio", "cache", "public.prompt_improvement_sessions", "warn", 0.72, 0.8,
     None, "72.0% of 310 requests", {"source": "app"}),
    ("postgres_buffer_hit_ratio", "cache", "postgres", "ok", 0.991, 0.95, None,
     "99.1% of 88,410 block reads", {"source": "postgres"}),
    ("user_rating_present", "quality", "public.user_feedback", "nodata", None, None, None,
     "no rows in the last 24h", {}),
]  # fmt: skip


def _ratio(check: str, minute: int) -> float:
    """Deterministic hit ratios; the app cache dipped below its target 40 to 25 minutes ago,
    and is below it again for the last 8 minutes."""
    wave = ((minute * 37) % 11) / 1000
    if check == "redis_hit_ratio":
        return 0.925 + wave
    if check == "postgres_buffer_hit_ratio":
        return 0.985 + wave / 2
    return 0.62 + wave if 25 <= minute <= 40 or minute <= 8 else 0.84 + wave


def _cache_crossings(
    results: list[
        tuple[str, str, float | None, float | None, float | None, str, dict[str, Any], datetime]
    ],
) -> list[tuple[datetime, str, str, str, str, dict[str, Any]]]:
    """The cache.dip / cache.recovered events the store records with results that cross the
    target (expected_low), for results inserted here directly."""
    crossings = []
    previous: dict[str, float] = {}
    for name, _state, value, target, _high, _msg, baseline, at in sorted(
        results, key=lambda r: r[7]
    ):
        if not baseline.get("source") or value is None or target is None:
            continue
        before = previous.get(name)
        previous[name] = value
        if value < target and (before is None or before >= target):
            kind, to = "cache.dip", "warn"
        elif value >= target and before is not None and before < target:
            kind, to = "cache.recovered", "ok"
        else:
            continue
        message = f"{value * 100:.1f}% (target {target * 100:.1f}%)"
        crossings.append((at, kind, name, "", message, {"to": to, "value": value}))
    return crossings


async def seed(conn: asyncpg.Connection) -> None:
    """Insert the incident. Triggers are off so times and authors are exactly as written."""
    await conn.execute("SET session_replication_role = replica")
    try:
        await _seed(conn)
    finally:
        await conn.execute("SET session_replication_role = DEFAULT")


async def _seed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pipectl.agents (id, name, host, pid, version, started_at, last_seen,"
        " heartbeat_seconds) VALUES ($1, 'apes-db-1', 'db1', 4242, '0.1.0', $2, now(), 3600)",
        AGENT_ID,
        NOW - timedelta(days=2),
    )
    for name, kind, relation, sql, schedule, deps, next_run, about in STEPS:
        await conn.execute(
            "INSERT INTO pipectl.steps (name, kind, relation, sql, schedule, depends_on,"
            " next_run_at, description, published_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            name, kind, relation, sql, schedule, deps, next_run, about, AGENT_ID,
        )  # fmt: skip
    await conn.execute(
        "UPDATE pipectl.steps SET paused = true, paused_by = 'alice', paused_at = $1,"
        " paused_reason = 'backfill of rule_combinations running' WHERE name = $2",
        NOW - timedelta(minutes=50),
        "rule_combinations_rollup",
    )
    runs = []
    for index, (name, *_rest) in enumerate(STEPS):
        for i in range(24, 0, -1):
            queued = NOW - timedelta(minutes=5 * i + index)
            took = 0.8 + index * 0.6 + ((i * 7) % 10) / 10
            status, error, rows = "succeeded", None, 100 + i * 3 + index * 1000
            if name == "session_cleanup" and i <= 2:
                status, rows = "failed", None
                error = (
                    "canceling statement due to statement timeout\n"
                    'CONTEXT: SQL statement "DELETE FROM prompt_improvement_sessions ..."'
                )
            if name == "rule_combinations_rollup" and i <= 10:
                status, rows, took = "skipped", None, 0.0
                error = "paused by alice: backfill of rule_combinations running"
            runs.append(
                (name, "schedule", status, queued, queued, queued + timedelta(seconds=took),
                 rows, error, AGENT_ID, queued)
            )  # fmt: skip
    await conn.executemany(
        "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at, finished_at,"
        " rows, error, agent_id, scheduled_for) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        runs,
    )
    for name, kind, target, status, value, _low, _high, _msg, definition in CHECKS:
        since = NOW - timedelta(minutes=35)
        await conn.execute(
            "INSERT INTO pipectl.checks (name, kind, target, sql, schedule, status, status_since,"
            " last_value, last_result_at, definition, published_by)"
            " VALUES ($1,$2,$3,$4,'every 1m',$5,$6,$7,$8,$9,$10)",
            name, kind, target,
            f"SELECT count(*) FROM {target} WHERE created_at > $1" if kind != "cache" else None,
            status, since, value, NOW - timedelta(seconds=30), json.dumps(definition), AGENT_ID,
        )  # fmt: skip
    await conn.execute(
        "UPDATE pipectl.checks SET silenced_until = $1, silenced_by = 'bob',"
        " silence_reason = 'feedback form is down (INC-311)' WHERE name = 'user_rating_present'",
        NOW + timedelta(hours=2),
    )
    results = []
    for name, kind, _target, status, value, low, high, message, definition in CHECKS:
        for minute in range(60, 0, -1):
            at = NOW - timedelta(minutes=minute) + timedelta(seconds=30)
            if kind == "cache":
                ratio = _ratio(name, minute)
                levels = {}
                if definition["source"] == "app":
                    levels = {
                        "L1": {"hits": round(200 * ratio * 0.5), "lookups": 200},
                        "L2": {"hits": round(100 * ratio), "lookups": 100},
                        "L3": {"hits": round(10 * ratio), "lookups": 10},
                    }
                baseline = {"source": definition["source"], "levels": levels}
                state = "ok" if ratio >= 0.8 else "warn"
                results.append((name, state, ratio, low, high, message, baseline, at))
            elif value is not None:
                wobble = value * (1 + (((minute * 13) % 7) - 3) / 30)
                results.append((name, status, wobble, low, high, message, {}, at))
            else:
                results.append((name, "nodata", None, None, None, message, {}, at))
    await conn.executemany(
        "INSERT INTO pipectl.check_results (check_name, status, value, expected_low,"
        " expected_high, message, baseline, observed_at, threshold, agent_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,'{\"warn_above\": 200}',"
        " '00000000-0000-4000-8000-000000000001')",
        [(n, s, v, lo, hi, m, json.dumps(b), at) for n, s, v, lo, hi, m, b, at in results],
    )
    # Sample series as the checks engine writes them: `<check>` for the value judged and,
    # for cache checks, `<check>:<level>` per level.
    samples = [
        ("request_latency_p95", NOW - timedelta(minutes=m), 150 + (m * 17) % 90)
        for m in range(120, 0, -1)
    ]
    for name, state, ratio, _lo, _hi, _m, baseline, at in results:
        if baseline.get("source") and ratio is not None:
            samples.append((name, at, ratio))
            for level, counts in baseline["levels"].items():
                samples.append((f"{name}:{level}", at, counts["hits"] / counts["lookups"]))
        del state
    await conn.executemany(
        "INSERT INTO pipectl.samples (series, ts, value) VALUES ($1, $2, $3)", samples
    )
    # What the rollup triggers (off here) would have kept.
    await conn.execute(
        "INSERT INTO pipectl.samples_hourly (series, hour, n, total)"
        " SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)"
        " FROM pipectl.samples GROUP BY 1, 2"
    )
    events = [
        (NOW - timedelta(hours=2), "agent.started", "apes-db-1", "apes-db-1",
         "agent apes-db-1 started on db1", {}),
        (NOW - timedelta(minutes=50), "step.paused", "rule_combinations_rollup", "alice",
         "rule_combinations_rollup paused by alice: backfill", {}),
        (NOW - timedelta(minutes=35), "check.status", "request_latency_p95", "pipectl_agent",
         "request_latency_p95: ok -> warn: p95 240 ms above 200 ms",
         {"from": "ok", "to": "warn"}),
        (NOW - timedelta(minutes=35), "check.status", "avg_improvement_score", "pipectl_agent",
         "avg_improvement_score: warn -> fail: 0.18 below 0.2", {"from": "warn", "to": "fail"}),
        (NOW - timedelta(minutes=20), "request.rerun", "session_cleanup", "carol",
         "retry after lock", {"request_id": 1}),
        (NOW - timedelta(minutes=19), "request.done", "session_cleanup", "carol",
         "session_cleanup failed (run 96): canceling statement due to statement timeout",
         {"request_id": 1, "kind": "rerun", "outcome": "failed"}),
    ]  # fmt: skip
    events += _cache_crossings(results)
    await conn.executemany(
        "INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)"
        " VALUES ($1,$2,$3,$4,$5,$6)",
        [(at, k, s, a, m, json.dumps(d)) for at, k, s, a, m, d in events],
    )
    requests = [
        ("rerun", "session_cleanup", {"downstream": False}, "retry after lock", "carol",
         NOW - timedelta(minutes=20), NOW - timedelta(minutes=19), "failed",
         "session_cleanup failed (run 96): canceling statement due to statement timeout"),
        ("check", "*", {}, "", "carol", NOW - timedelta(minutes=12),
         NOW - timedelta(minutes=12), "succeeded", "7 checks ran: 3 ok, 2 warn, 1 fail"),
        ("silence", "user_rating_present", {"seconds": 7200}, "feedback form is down (INC-311)",
         "bob", NOW - timedelta(minutes=3), None, None, None),
    ]  # fmt: skip
    await conn.executemany(
        "INSERT INTO pipectl.requests (kind, target, args, reason, requested_by, created_at,"
        " claimed_by, claimed_at, done_at, outcome, detail)"
        " SELECT $1, $2, $3, $4, $5, $6,"
        " CASE WHEN $7::timestamptz IS NOT NULL THEN $10::uuid END, $7, $7, $8, $9",
        [(k, t, json.dumps(a), r, by, c, d, o, det, AGENT_ID) for k, t, a, r, by, c, d, o, det in
         requests],
    )  # fmt: skip
