"""cache: hit ratios of APES's cache levels and of PostgreSQL's buffer cache.

- **redis**: INFO `keyspace_hits` / `keyspace_misses` of the L2 Redis. They are server-wide
  counters since the server started (every database number and every client: another tenant
  of the same server moves them, which the message says), so the ratio is taken over the
  *delta* since the previous reading. No per-key-prefix ratio is offered: Redis counts hits
  and misses per server only (INFO keyspace has per-database key counts, not lookups), and
  the APES app's own hit counters count writes as lookups. The honest per-request record of
  which level answered is the **app** source below.
  PostgreSQL's buffer counters (**postgres**: `pg_stat_database` for this database,
  `pg_statio_user_tables` heap blocks for each watched table; a partitioned table is the sum
  of its leaf partitions, which is where PostgreSQL counts) are handled the same way.
  The previous reading is the baseline of the check's last stored result: it survives agent
  restarts and is shared by every agent. An interval with fewer than `min_requests` lookups is
  nodata and keeps the older reading, so quiet periods add up instead of never being judged.
  A counter that went down (server restart, stats reset; Redis `run_id` or PostgreSQL
  `stats_reset` changed) is reported as "counters reset", never as a negative ratio.
- **app**: the share of requests answered by each level, from the per-request record
  (`prompt_improvement_sessions.cache_hit_level`) over `window`. In APES, L1 is the in-process
  LRU, L2 is Redis and L3 the database-backed precomputed cache; only MISS recomputes, so the
  judged hit ratio is (L1 + L2 + L3) / (L1 + L2 + L3 + MISS). Rows with any other level are left
  out of the ratio and counted in the baseline as `other` (the quality check
  `cache_level_valid` reports them).

Defaults (`CacheCheck.thresholds`): Redis and app warn below 0.80 and fail below 0.50;
PostgreSQL warn below 0.95 and fail below 0.90. `min_requests` defaults per source
(`MIN_REQUESTS`): 20 requests for redis and app, 2000 buffer lookups for postgres.

A monitor must not fail the metric it disturbs: the postgres source leaves out the lookups
pipectl itself made (its refreshes and probes, recorded in `pipectl.own_reads` by the agent,
see `pipectl/store/own_reads.py`) before it counts and judges an interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from pipectl import store
from pipectl.cache_floors import floors as floors
from pipectl.cache_floors import published_floors as published_floors
from pipectl.checks.base import Context, KindSpec, number, point, zone
from pipectl.checks.catalog import STATS_KINDS, TEXT_TYPES, TIME_TYPES, Need
from pipectl.checks.sql import Params, Query, col, window_predicate
from pipectl.config import (
    CheckBase,
    ColumnName,
    Config,
    PositiveDuration,
    Ratio,
    RelationName,
)
from pipectl.durations import format_duration, humanize_age
from pipectl.model import CheckResult, CheckStatus


class CacheCheck(CheckBase):
    kind: Literal["cache"]
    source: Literal["redis", "postgres", "app"]
    tables: list[RelationName] = Field(default_factory=list)
    table: RelationName | None = None
    column: ColumnName | None = None
    time_column: ColumnName | None = None
    window: PositiveDuration = timedelta(minutes=15)
    warn_below: Ratio | None = None
    fail_below: Ratio | None = None
    min_requests: int | None = Field(default=None, ge=0)
    incremental: bool | None = None
    """source 'app': the agent's ticks read only new rows (None: check_defaults.incremental)."""

    @model_validator(mode="after")
    def _shape(self) -> CacheCheck:
        if self.incremental and self.source != "app":
            raise ValueError("'incremental' applies to source 'app' (a window of rows) only")
        if self.source == "app" and self.table is None:
            raise ValueError(
                "source 'app' needs 'table' (where each request records its cache level)"
            )
        if self.source == "app" and (self.column is None or self.time_column is None):
            raise ValueError(
                "source 'app' needs 'column' (the cache level) and 'time_column' (when)"
            )
        if self.source != "app" and self.table is not None:
            raise ValueError(f"'table' is only for source 'app', not {self.source!r}")
        if self.source != "postgres" and self.tables:
            raise ValueError(f"'tables' is only for source 'postgres', not {self.source!r}")
        if None not in (self.warn_below, self.fail_below) and self.fail_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("fail_below must not be above warn_below")
        return self

    def thresholds(self) -> tuple[float, float]:
        """Warn and fail floors, defaulting to the targets in the checks issue."""
        return floors(self.source, self.warn_below, self.fail_below)

    def requests_floor(self) -> int:
        """Lookups an interval (or window) needs before it is judged: `min_requests`, else
        the source's default (MIN_REQUESTS)."""
        return self.min_requests if self.min_requests is not None else MIN_REQUESTS[self.source]


MIN_REQUESTS = {"redis": 20, "app": 20, "postgres": 2000}
"""Default min_requests per source. A buffer cache sees thousands of lookups a minute even on
a quiet database; a ratio over a few hundred of them swings with any single scan."""


LEVELS = ("L1", "L2", "L3", "MISS")
_STATE_KEY = "counters"

# ---------------------------------------------------------------------------------------------
# Counter deltas (redis and postgres)


@dataclass(frozen=True)
class Counter:
    hits: int
    misses: int
    at: datetime


@dataclass(frozen=True)
class Reading:
    """Cumulative counters at one moment; `epoch` changes when the server resets them."""

    epoch: str | None
    counters: dict[str, Counter]

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "counters": {
                key: {"hits": c.hits, "misses": c.misses, "at": c.at.isoformat()}
                for key, c in self.counters.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Reading | None:
        if not data or not isinstance(data.get("counters"), dict):
            return None
        return cls(
            data.get("epoch"),
            {
                key: Counter(int(c["hits"]), int(c["misses"]), datetime.fromisoformat(c["at"]))
                for key, c in data["counters"].items()
            },
        )


@dataclass(frozen=True)
class Interval:
    """What happened to one counter since its previous reading."""

    key: str
    state: str
    """'delta', 'first', 'reset' or 'quiet' (fewer lookups than min_requests)."""
    hits: int = 0
    misses: int = 0
    seconds: float = 0.0
    own: int = 0
    """pipectl's own lookups left out of hits and misses."""

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def ratio(self) -> float | None:
        return self.hits / self.lookups if self.state == "delta" and self.lookups else None


def intervals(
    previous: Reading | None,
    current: Reading,
    min_requests: int,
    own: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[list[Interval], Reading]:
    """Per-counter deltas, and the reading to remember for next time.

    `own[key]` = (lookups, hits) pipectl itself made on that counter since its previous
    reading: left out of the delta (never below zero), so a monitor does not judge its own
    scans. A quiet counter keeps its previous reading so that lookups accumulate until
    there are enough to judge; any other outcome remembers the current one.
    """
    found: list[Interval] = []
    remembered: dict[str, Counter] = {}
    reset_all = previous is not None and previous.epoch != current.epoch
    for key, now in current.counters.items():
        before = previous.counters.get(key) if previous else None
        if before is None:
            found.append(Interval(key, "first"))
        elif reset_all or now.hits < before.hits or now.misses < before.misses:
            found.append(Interval(key, "reset"))
        else:
            hits, misses = now.hits - before.hits, now.misses - before.misses
            own_fetched, own_hits = (own or {}).get(key, (0, 0))
            own_misses = own_fetched - own_hits
            left = min(own_hits, hits) + min(own_misses, misses)
            hits, misses = max(hits - own_hits, 0), max(misses - own_misses, 0)
            seconds = (now.at - before.at).total_seconds()
            if hits + misses < max(min_requests, 1):
                found.append(Interval(key, "quiet", hits, misses, seconds, left))
                remembered[key] = before
                continue
            found.append(Interval(key, "delta", hits, misses, seconds, left))
        remembered[key] = now
    return found, Reading(current.epoch, remembered)


def ratio_status(ratio: float, warn_below: float, fail_below: float) -> CheckStatus:
    if ratio < fail_below:
        return CheckStatus.FAIL
    if ratio < warn_below:
        return CheckStatus.WARN
    return CheckStatus.OK


def evaluate_counters(
    check: CacheCheck,
    previous: Reading | None,
    current: Reading,
    now: datetime,
    source: str,
    label: str,
    own: Mapping[str, tuple[int, int]] | None = None,
) -> CheckResult:
    """Pure: judge each counter's delta (pipectl's `own` lookups left out); the lowest ratio
    judged is the check's value."""
    warn_below, fail_below = check.thresholds()
    min_requests = check.requests_floor()
    found, remember = intervals(previous, current, min_requests, own)
    judged = [i for i in found if i.ratio is not None]
    worst = min(judged, key=lambda i: i.ratio or 0.0, default=None)
    value = worst.ratio if worst is not None else None
    status = CheckStatus.NODATA if value is None else ratio_status(value, warn_below, fail_below)
    notes = [_interval_text(item, label, min_requests) for item in found]
    if value is not None and status != CheckStatus.OK:
        limit = fail_below if status == CheckStatus.FAIL else warn_below
        notes.insert(0, f"hit ratio {value:.3f} below the {status} limit {number(limit)}")
    samples = [point(check.name, now, value, source)] if value is not None else []
    if len(current.counters) > 1:  # one series per counter, for the console's graphs
        samples += [point(f"{check.name}:{i.key}", now, i.ratio or 0.0, source) for i in judged]
    return CheckResult(
        check=check.name,
        status=status,
        value=value,
        message="; ".join(notes),
        observed_at=now,
        threshold={
            "warn_below": warn_below,
            "fail_below": fail_below,
            "min_requests": min_requests,
        },
        expected_low=warn_below,
        expected_high=1.0,
        baseline={
            **remember.as_json(),
            "lookups": {i.key: i.lookups for i in found if i.state in ("delta", "quiet")},
            "own_lookups": {i.key: i.own for i in found if i.own},
            **metric_levels(check.source, {_level(i.key): (i.hits, i.lookups) for i in judged}),
            "deltas": True,
        },
        samples=tuple(samples),
    )


def _level(key: str) -> str:
    """Counter key -> the `level` label of pipectl_cache_* metrics."""
    return "all" if key == "redis" else key


def metric_levels(source: str, counts: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """What agent/metrics.py exports: {"source": ..., "levels": {level: {hits, lookups}}}."""
    return {
        "source": source,
        "levels": {level: {"hits": h, "lookups": n} for level, (h, n) in counts.items()},
    }


def _interval_text(item: Interval, label: str, min_requests: int) -> str:
    name = label if item.key in ("redis", "database") else item.key
    if item.state == "first":
        return f"{name}: first reading, ratio from the next run"
    if item.state == "reset":
        return (
            f"{name}: counters reset (server restarted or statistics reset), "
            "ratio from the next run"
        )
    spent = humanize_age(item.seconds)
    own = f"; pipectl's own {item.own} left out" if item.own else ""
    if item.state == "quiet":
        return (
            f"{name}: not enough lookups to judge, only {item.lookups} lookups in {spent}"
            f" (min_requests {min_requests}{own})"
        )
    return f"{name} {item.ratio:.3f} over {item.lookups} lookups in {spent}{own}"


async def _previous(ctx: Context[CacheCheck]) -> Reading | None:
    row = await store.last_baseline(ctx.conn, ctx.check.name, _STATE_KEY)
    return Reading.from_json(row.baseline) if row else None


# ---------------------------------------------------------------------------------------------
# redis


REDIS_LABEL = "Redis server-wide keyspace hits/misses"
"""How a Redis result names what it measured: INFO's counters cover every database and every
client of the server, not only APES's keys."""


async def redis_reading(ctx: Context[CacheCheck]) -> Reading:
    """INFO once; after a server restart the pooled connection is dead, so try once more."""
    assert ctx.redis is not None
    # Imported here: importing redis costs ~0.3 s (it loads OpenTelemetry's SDK when present),
    # and configs are parsed with this module by verbs that never talk to Redis.
    from redis.exceptions import ConnectionError as RedisConnectionError

    async with asyncio.timeout(ctx.timeout.total_seconds()):
        try:
            info = await ctx.redis.info()
        except RedisConnectionError:
            info = await ctx.redis.info()
    return Reading(
        str(info.get("run_id")),
        {"redis": Counter(int(info["keyspace_hits"]), int(info["keyspace_misses"]), ctx.now)},
    )


async def run_redis(ctx: Context[CacheCheck]) -> CheckResult:
    check = ctx.check
    if ctx.redis is None:
        return CheckResult(
            check.name,
            CheckStatus.ERROR,
            None,
            "no Redis configured: set [redis] url or PIPECTL_REDIS_URL",
            ctx.now,
        )
    from redis.exceptions import RedisError  # loaded already: ctx.redis is a client

    previous = await _previous(ctx)
    try:
        current = await redis_reading(ctx)
    except (RedisError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        return CheckResult(
            check.name, CheckStatus.ERROR, None, f"Redis unreachable: {reason}", ctx.now
        )
    return evaluate_counters(check, previous, current, ctx.now, ctx.source, REDIS_LABEL)


# ---------------------------------------------------------------------------------------------
# postgres


def postgres_query(check: CacheCheck) -> Query:
    """One row for the database and one per watched table: its heap blocks, summed over its
    leaf partitions when it is partitioned (`parts` names the relations summed)."""
    params = Params()
    schemas = params.add([t.schema for t in check.tables])
    names = params.add([t.name for t in check.tables])
    return Query(
        "SELECT 'database' AS key, blks_hit AS hits, blks_read AS misses,"
        " stats_reset::text AS epoch, NULL::text[] AS parts"
        " FROM pg_stat_database WHERE datname = current_database()"
        " UNION ALL"
        " SELECT w.schema || '.' || w.name, coalesce(sum(s.heap_blks_hit), 0),"
        " coalesce(sum(s.heap_blks_read), 0), NULL,"
        " array_agg(s.schemaname || '.' || s.relname ORDER BY s.relid)"
        f" FROM unnest({schemas}::text[], {names}::text[]) AS w(schema, name)"
        " JOIN pg_namespace n ON n.nspname = w.schema"
        " JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name"
        " JOIN pg_statio_user_tables s ON s.relid = c.oid OR (c.relkind = 'p' AND s.relid IN"
        " (SELECT t.relid FROM pg_partition_tree(c.oid) t WHERE t.isleaf))"
        " GROUP BY w.schema, w.name",
        params,
    )


async def run_postgres(ctx: Context[CacheCheck]) -> CheckResult:
    check = ctx.check
    rows = await postgres_query(check).fetch(ctx.conn)
    epoch = next((r["epoch"] for r in rows if r["key"] == "database"), None)
    current = Reading(
        epoch, {r["key"]: Counter(int(r["hits"]), int(r["misses"]), ctx.now) for r in rows}
    )
    parts = {r["key"]: list(r["parts"] or [r["key"]]) for r in rows}
    previous = await _previous(ctx)
    own = await _own_reads(ctx, previous, current, parts)
    return evaluate_counters(check, previous, current, ctx.now, ctx.source, "database buffers", own)


async def _own_reads(
    ctx: Context[CacheCheck],
    previous: Reading | None,
    current: Reading,
    parts: Mapping[str, list[str]],
) -> dict[str, tuple[int, int]]:
    """pipectl's own lookups (pipectl.own_reads, written by the agent around its refreshes
    and probes) since each counter's previous reading: they are left out of the ratio. They
    are recorded per relation read, so a partitioned table's are its partitions' summed."""
    if previous is None or previous.epoch != current.epoch:
        return {}
    keys = [key for key in previous.counters if key in current.counters]
    since = {part: previous.counters[key].at for key in keys for part in parts.get(key, [key])}
    found = await store.own_reads_between(ctx.conn, since, ctx.now)
    own: dict[str, tuple[int, int]] = {}
    for key in keys:
        summed = [found.get(part, (0, 0)) for part in parts.get(key, [key])]
        own[key] = (sum(fetched for fetched, _ in summed), sum(hit for _, hit in summed))
    return own


# ---------------------------------------------------------------------------------------------
# app


@dataclass(frozen=True)
class LevelCounts:
    counts: dict[str, int]
    other: int

    @property
    def answered(self) -> int:
        return sum(self.counts.values())

    @property
    def hits(self) -> int:
        return self.answered - self.counts["MISS"]


def app_query(check: CacheCheck, now: datetime) -> Query:
    assert check.table is not None
    assert check.column is not None
    assert check.time_column
    params = Params()
    span = window_predicate(check.time_column, params, now - check.window, now)
    level = col(check.column)
    counts = ", ".join(
        f"count(*) FILTER (WHERE {level} = '{name}') AS {name.lower()}" for name in LEVELS
    )
    return Query(f"SELECT {counts}, count(*) AS total FROM {check.table.sql} WHERE {span}", params)


def evaluate_levels(
    check: CacheCheck, levels: LevelCounts, now: datetime, source: str
) -> CheckResult:
    """Pure: (L1 + L2 + L3) / answered over the window, with the share of each level."""
    warn_below, fail_below = check.thresholds()
    span = f"the last {format_duration(check.window)}"
    threshold = {
        "warn_below": warn_below,
        "fail_below": fail_below,
        "min_requests": check.requests_floor(),
    }
    baseline: dict[str, Any] = {**levels.counts, "other": levels.other}
    total = levels.answered
    if total == 0 or total < check.requests_floor():
        return CheckResult(
            check.name,
            CheckStatus.NODATA,
            None,
            f"not enough requests: only {total} in {span} (min_requests {check.requests_floor()})",
            now,
            threshold=threshold,
            baseline=baseline,
        )
    ratio = levels.hits / total
    status = ratio_status(ratio, warn_below, fail_below)
    shares = {name: count / total for name, count in levels.counts.items()}
    parts = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    message = f"hit ratio {ratio:.3f} over {total} requests in {span} ({parts})"
    if status != CheckStatus.OK:
        limit = fail_below if status == CheckStatus.FAIL else warn_below
        message += f"; below the {status} limit {number(limit)}"
    samples = [point(check.name, now, ratio, source)]
    samples += [
        point(f"{check.name}:{name}", now, share, source, labels={"level": name})
        for name, share in shares.items()
    ]
    # Window counts overlap from one run to the next: exported as ratios, never as counter
    # increments ("deltas": False).
    counts = {"all": (levels.hits, total)} | {n: (c, total) for n, c in levels.counts.items()}
    return CheckResult(
        check=check.name,
        status=status,
        value=ratio,
        message=message,
        observed_at=now,
        threshold=threshold,
        expected_low=warn_below,
        expected_high=1.0,
        baseline={**baseline, **metric_levels("app", counts), "deltas": False},
        samples=tuple(samples),
    )


async def run_app(ctx: Context[CacheCheck]) -> CheckResult:
    check = ctx.check
    assert check.table is not None
    row = await app_query(check, ctx.now).fetchrow(ctx.conn, ctx.table(check.table), zone("UTC"))
    counts = {name: int(row[name.lower()]) for name in LEVELS}
    levels = LevelCounts(counts, int(row["total"]) - sum(counts.values()))
    return evaluate_levels(check, levels, ctx.now, ctx.source)


# ---------------------------------------------------------------------------------------------


async def run(ctx: Context[CacheCheck]) -> CheckResult:
    if ctx.check.source == "redis":
        return await run_redis(ctx)
    if ctx.check.source == "postgres":
        return await run_postgres(ctx)
    return await run_app(ctx)


def needs(check: CacheCheck) -> list[Need]:
    if check.source == "postgres":
        return [
            Need(f"tables[{i}]", table, kinds=STATS_KINDS, relation_path=f"tables[{i}]")
            for i, table in enumerate(check.tables)
        ]
    if check.source == "app":
        assert check.table is not None
        assert check.column
        assert check.time_column
        return [
            Need("column", check.table, check.column, TEXT_TYPES, "text (the cache level)"),
            Need("time_column", check.table, check.time_column, TIME_TYPES, "a timestamp"),
        ]
    return []


def sql(check: CacheCheck, config: Config) -> str:
    if check.source == "redis":
        return "-- Redis: INFO (keyspace_hits, keyspace_misses, run_id)"
    if check.source == "postgres":
        return postgres_query(check).sql
    return app_query(check, datetime.now(UTC)).sql


def target(check: CacheCheck) -> str:
    if check.source == "app":
        return f"{check.table}.{check.column}"
    if check.source == "postgres":
        return ", ".join(["database", *(str(t) for t in check.tables)])
    return "redis"


KIND = KindSpec[CacheCheck](
    model=CacheCheck,
    needs=needs,
    sql=sql,
    target=target,
    describe=lambda check: check.description or f"{check.source} cache hit ratio",
    run=run,
)
