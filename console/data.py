"""What each screen fetches: async functions of a connection returning immutable snapshots.

They only combine `pipectl.store` read functions (the same ones `pipectl status` and
`pipectl history` use; no SQL of their own) and the cache kind's published floors; windows come
from the console's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from pipectl import store
from pipectl.cache_floors import published_floors
from pipectl.lineage import Lineage
from pipectl.model import Request, RequestKind
from pipectl.request_args import RequestArgs
from pipectl.store.base import Conn
from pipectl.store.console import (
    HOUR,
    CacheSeries,
    CheckDetail,
    RequestRow,
    RunSpan,
    StepDetail,
    StepHealth,
    TimelineEntry,
    cache_history,
    cache_latest,
    check_detail,
    check_trends,
    request_with_agent,
    requests_with_agents,
    run_spans,
    session_role,
    step_detail,
    step_graph,
    step_health,
    timeline,
)
from pipectl.store.lineage import published_lineage

if TYPE_CHECKING:
    from pipectl.telemetry import Telemetry


# What the wide Overview draws over time: the last hours, in buckets of a few minutes.
OVERVIEW_WINDOW = timedelta(hours=6)
OVERVIEW_BUCKET = timedelta(minutes=5)


@dataclass(frozen=True)
class OverviewData:
    status: store.StatusSnapshot
    cache: tuple[CacheSeries, ...]
    health: dict[str, StepHealth] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    spans: dict[str, tuple[RunSpan, ...]] = field(default_factory=dict)
    """Each step's runs in [since, until): only read for a wide terminal."""
    cache_history: tuple[CacheSeries, ...] = ()
    """Each cache check's ratio per bucket of [since, until): only for a wide terminal."""
    lineage: Lineage | None = None
    """The graph the incidents panel walks (pipectl.incidents)."""


async def overview(conn: Conn, now: datetime | None = None, wide: bool = False) -> OverviewData:
    """The `pipectl status` read model, why each step looks as it does (`step_health`), the
    latest reading of each cache check, the lineage graph its incidents are found with and,
    for a wide terminal, the last hours of runs and cache ratios (`now` is the console's
    clock)."""
    status = await store.status_snapshot(conn)
    latest = await cache_latest(conn, published_floors)
    names = [s.name for s in status.steps]
    health = await step_health(conn, names)
    lineage = await published_lineage(conn)
    if not wide or now is None:
        return OverviewData(status, tuple(latest), health, lineage=lineage)
    since = now - OVERVIEW_WINDOW
    spans = await run_spans(conn, names, since, now)
    history = await cache_history(conn, since, now, OVERVIEW_BUCKET, published_floors)
    return OverviewData(
        status, tuple(latest), health, since, now, spans, tuple(history), lineage=lineage
    )


@dataclass(frozen=True)
class ChecksData:
    status: store.StatusSnapshot
    trends: dict[str, tuple[float, ...]]


async def checks(conn: Conn) -> ChecksData:
    status = await store.status_snapshot(conn)
    trends = await check_trends(conn, [c.name for c in status.checks])
    return ChecksData(status, trends)


async def step(conn: Conn, name: str) -> StepDetail | None:
    return await step_detail(conn, name)


async def check(conn: Conn, name: str, now: datetime) -> CheckDetail | None:
    return await check_detail(conn, name, since=now - timedelta(days=1))


@dataclass(frozen=True)
class CacheData:
    since: datetime
    until: datetime
    bucket: timedelta
    series: tuple[CacheSeries, ...]


async def cache(conn: Conn, now: datetime, window: timedelta) -> CacheData:
    """Ratios in up to 120 buckets of the window: at least a minute each (checks run each
    minute), and whole hours once past an hour, so long windows read the hourly rollup."""
    bucket = max(timedelta(minutes=1), window / 120)
    if bucket > HOUR:
        bucket = HOUR * math.ceil(bucket / HOUR)
    since = now - window
    series = await cache_history(conn, since, now, bucket, published_floors)
    return CacheData(since, now, bucket, tuple(series))


@dataclass(frozen=True)
class TimelineData:
    since: datetime
    until: datetime
    entries: tuple[TimelineEntry, ...]
    steps: frozenset[str] = frozenset()
    checks: frozenset[str] = frozenset()


async def timeline_of(conn: Conn, now: datetime, window: timedelta) -> TimelineData:
    """The merged timeline, and which subjects are steps or checks (to open their detail)."""
    since = now - window
    # A little past the clock, so what happened while the snapshot was taken still shows.
    until = now + timedelta(minutes=1)
    entries = await timeline(conn, since, until)
    steps = frozenset(await step_graph(conn))
    checks = frozenset(c.name for c in await store.check_states(conn))
    return TimelineData(since, now, tuple(entries), steps, checks)


async def requests(conn: Conn) -> tuple[RequestRow, ...]:
    return tuple(await requests_with_agents(conn))


async def request_row(conn: Conn, request_id: int) -> RequestRow | None:
    return await request_with_agent(conn, request_id)


# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class RequestIntent:
    """What an action asks the agents to do, before it becomes a row."""

    kind: str
    target: str
    reason: str = ""
    args: RequestArgs | None = None  # None: the kind's defaults
    summary: str = ""


class RequestDenied(Exception):
    """PostgreSQL refused the insert: the role may not file requests."""


async def file_request(
    conn: Conn, intent: RequestIntent, telemetry: Telemetry | None = None
) -> Request:
    """Insert the request row (PostgreSQL records who asked, audits it, wakes the agents),
    with the trace context of its filing span when the console exports spans: the agent's
    claim, runs and outcome continue that trace."""
    try:
        if telemetry is None:  # no tracing: the OpenTelemetry SDK is not even loaded
            return await _insert(conn, intent, None)
        from pipectl.telemetry import filing_span

        with filing_span(telemetry, intent.kind, intent.target) as (_, traceparent):
            return await _insert(conn, intent, traceparent)
    except asyncpg.InsufficientPrivilegeError as exc:
        user = await session_role(conn)
        raise RequestDenied(
            f"permission denied: role {user!r} may not file requests (it needs pipectl_operator)"
        ) from exc


async def _insert(conn: Conn, intent: RequestIntent, traceparent: str | None) -> Request:
    return await store.create_request(
        conn,
        RequestKind(intent.kind),
        intent.target,
        intent.reason,
        intent.args,
        traceparent=traceparent,
    )
