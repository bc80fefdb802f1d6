"""Read models the console needs beyond `views.status_snapshot`: step and check detail, trends,
cache ratios over time, the merged incident timeline, requests with agent names.

Each function is one or two index-backed round trips returning frozen data; windows are given
by the caller (the console's clock), never taken from the server's `now()`, so what is shown
is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pipectl.dag import Dag
from pipectl.model import CheckStatus, Request, Run, RunStatus, Sample
from pipectl.store.base import DB
from pipectl.store.definitions import CheckState, StepState, check_states, step_states
from pipectl.store.requests import get_request, list_requests
from pipectl.store.results import ResultRow, recent_results
from pipectl.store.runs import _RUN_COLUMNS, _run, recent_runs
from pipectl.store.samples import read_series
from pipectl.store.views import StepRow, latest_outcomes, state_runs, state_word

# ------------------------------------------------------------------------------ privileges


async def can_file_requests(db: DB) -> bool:
    """Whether this role may insert requests. PostgreSQL enforces it; the console reflects it."""
    allowed: bool = await db.fetchval("SELECT has_table_privilege('pipectl.requests', 'INSERT')")
    return allowed


async def session_role(db: DB) -> str:
    """The role this session logged in as: the one PostgreSQL checks privileges against."""
    user: str = await db.fetchval("SELECT session_user")
    return user


# ------------------------------------------------------------------------------ steps


@dataclass(frozen=True)
class DurationStats:
    """Expected duration of a step, from its recent successful runs."""

    step: str
    p50: float | None = None
    p95: float | None = None
    samples: int = 0


async def duration_stats(
    db: DB, steps: Sequence[str], sample: int = 100
) -> dict[str, DurationStats]:
    """p50 / p95 of the last `sample` successful runs of each step (runs_last_success_idx)."""
    rows = await db.fetch(
        """
        SELECT s.step,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY d.seconds) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY d.seconds) AS p95,
               count(d.seconds) AS samples
        FROM unnest($1::text[]) AS s(step)
        CROSS JOIN LATERAL (
            SELECT extract(epoch FROM r.finished_at - r.started_at)::float8 AS seconds
            FROM pipectl.runs r
            WHERE r.step = s.step AND r.status = 'succeeded' AND r.started_at IS NOT NULL
            ORDER BY r.finished_at DESC
            LIMIT $2
        ) d
        GROUP BY s.step
        """,
        list(steps),
        sample,
    )
    found = {r["step"]: DurationStats(r["step"], r["p50"], r["p95"], r["samples"]) for r in rows}
    return {step: found.get(step, DurationStats(step)) for step in steps}


async def step_graph(db: DB) -> dict[str, tuple[str, ...]]:
    """Enabled steps and what each depends on, as published by the agents."""
    rows = await db.fetch("SELECT name, depends_on FROM pipectl.steps WHERE enabled ORDER BY name")
    return {r["name"]: tuple(r["depends_on"] or ()) for r in rows}


@dataclass(frozen=True)
class PlannedStep:
    name: str
    expected: DurationStats
    last_run: Run | None
    paused: bool = False


@dataclass(frozen=True)
class RerunPlan:
    """Exactly what a rerun will run, in order, with what each is expected to take."""

    step: str
    downstream: bool
    steps: tuple[PlannedStep, ...]

    @property
    def expected_p50(self) -> float | None:
        values = [s.expected.p50 for s in self.steps]
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values)

    @property
    def expected_p95(self) -> float | None:
        values = [s.expected.p95 for s in self.steps]
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values)


async def rerun_plan(db: DB, step: str, downstream: bool) -> RerunPlan | None:
    """The steps a rerun of `step` runs, in the agent's order (`Dag.rerun` over the published
    steps), each with its expected duration and last outcome; None for an unknown step.
    Raises CycleError when the published steps form a cycle (agents with clashing configs)."""
    dag = Dag(await step_graph(db))
    if step not in dag:
        return None
    names = dag.rerun(step, downstream)
    stats = await duration_stats(db, names)
    last = await latest_outcomes(db, names)
    paused = {s.name for s in await step_states(db, names) if s.paused}
    planned = tuple(PlannedStep(n, stats[n], last.get(n), n in paused) for n in names)
    return RerunPlan(step, downstream, planned)


@dataclass(frozen=True)
class StepDetail:
    state: StepState
    runs: tuple[Run, ...]
    durations: DurationStats
    last_failure: Run | None
    graph: dict[str, tuple[str, ...]] = field(default_factory=dict)
    held: Run | None = None
    """The step's latest decisive run when a gate held it (its detail has the evidence):
    what publish-anyway would publish."""
    shown: str = "never"
    """Its state in one word, as `pipectl status`, the Overview and the incidents say it
    (`views.state_word`)."""


async def step_detail(db: DB, step: str, limit: int = 60) -> StepDetail | None:
    """One step with its recent runs, expected duration and last failure; None if unknown."""
    states = await step_states(db, [step])
    if not states:
        return None
    runs = await recent_runs(db, [step], limit)
    stats = await duration_stats(db, [step])
    row = await db.fetchrow(
        f"""
        SELECT {_RUN_COLUMNS} FROM pipectl.runs r
        LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        WHERE r.step = $1 AND r.status = 'failed'
        ORDER BY r.queued_at DESC, r.id DESC LIMIT 1
        """,
        step,
    )
    latest = (await latest_outcomes(db, [step])).get(step)
    deciding = (await state_runs(db, [step])).get(step)
    return StepDetail(
        state=states[0],
        runs=tuple(runs),
        durations=stats[step],
        last_failure=_run(row) if row else None,
        graph=await step_graph(db),
        held=latest if latest is not None and latest.status == RunStatus.HELD else None,
        shown=state_word(states[0].paused, deciding, latest),
    )


@dataclass(frozen=True)
class StepHealth:
    """Why a step looks the way it does, beyond its state (`StepRow.state`, the one
    definition, failing between attempts included): how many attempts it gets, how many failed
    since the last success, the newest skip and who held the lock then."""

    step: str
    retries: int | None
    """Retries the publishing agent allows after a failed attempt (None: not published)."""
    failures: int
    """Failed attempts since the last success (counted up to FAILURE_WINDOW)."""
    skip_error: str | None = None
    skip_holder: str | None = None

    @property
    def attempts(self) -> int | None:
        return None if self.retries is None else self.retries + 1

    def note(self, row: StepRow) -> str:
        """Why, in words: the attempt in progress, the failures in a row, the error."""
        parts: list[str] = []
        state = row.state_run
        if row.state == "failing" and state is not None:
            of = f" of {self.attempts}" if self.attempts else ""
            parts.append(f"attempt {state.attempt}{of} {state.status}")
        failed = row.last_decisive
        if failed is not None and failed.status == RunStatus.FAILED:
            if self.failures:
                parts.append(
                    f"failed {_times(self.failures)} since its last success"
                    if self.failures > 1
                    else "last attempt failed"
                )
            if failed.error:
                parts.append(_first_line(failed.error))
        skipped = state is not None and state.status == RunStatus.SKIPPED
        if skipped and self.skip_holder:
            parts.append(f"skipped: lock held by {self.skip_holder}")
        elif skipped and self.skip_error:
            parts.append(f"skipped: {_first_line(self.skip_error)}")
        return " · ".join(parts)


FAILURE_WINDOW = 100


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0]


def _times(count: int) -> str:
    return f"{count}+ times" if count >= FAILURE_WINDOW else f"{count} times"


async def step_health(db: DB, steps: Sequence[str]) -> dict[str, StepHealth]:
    """Each step's StepHealth: its retries, the failed attempts since its last success (at
    most FAILURE_WINDOW read) and its newest skip. Index probes per step; the state itself
    and the runs it rests on are the status snapshot's (`StepRow`)."""
    rows = await db.fetch(
        """
        SELECT s.name,
               CASE WHEN jsonb_typeof(s.definition->'effective'->'retries') = 'number'
                    THEN (s.definition->'effective'->>'retries')::int END AS retries,
               (SELECT count(*) FROM (
                    SELECT 1 FROM pipectl.runs f
                    WHERE f.step = s.name AND f.status = 'failed'
                      AND f.finished_at > coalesce(
                          (SELECT max(x.finished_at) FROM pipectl.runs x
                            WHERE x.step = s.name AND x.status = 'succeeded'), '-infinity')
                    ORDER BY f.finished_at DESC LIMIT $2
                ) recent) AS failures,
               sk.error AS skip_error, sk.detail->>'holder' AS skip_holder
        FROM pipectl.steps s
        LEFT JOIN LATERAL (
            SELECT error, detail FROM pipectl.runs k
            WHERE k.step = s.name AND k.status = 'skipped'
            ORDER BY k.queued_at DESC, k.id DESC LIMIT 1
        ) sk ON true
        WHERE s.name = ANY($1::text[])
        """,
        list(steps),
        FAILURE_WINDOW,
    )
    return {
        r["name"]: StepHealth(
            r["name"], r["retries"], int(r["failures"] or 0), r["skip_error"], r["skip_holder"]
        )
        for r in rows
    }


@dataclass(frozen=True)
class RunSpan:
    """One run on the overview's timeline strip."""

    step: str
    status: str
    start: datetime
    end: datetime | None


async def run_spans(
    db: DB, steps: Sequence[str], since: datetime, until: datetime, limit: int = 20000
) -> dict[str, tuple[RunSpan, ...]]:
    """The runs of each step queued in [since, until), oldest first (runs_step_time_idx)."""
    rows = await db.fetch(
        """
        SELECT r.step, r.status, coalesce(r.started_at, r.queued_at) AS start, r.finished_at
        FROM unnest($1::text[]) AS s(step)
        CROSS JOIN LATERAL (
            SELECT step, status, queued_at, started_at, finished_at FROM pipectl.runs
            WHERE step = s.step AND queued_at >= $2 AND queued_at < $3
            ORDER BY queued_at DESC LIMIT $4
        ) r
        ORDER BY r.step, r.queued_at
        """,
        list(steps),
        since,
        until,
        limit,
    )
    spans: dict[str, list[RunSpan]] = {step: [] for step in steps}
    for r in rows:
        spans[r["step"]].append(RunSpan(r["step"], r["status"], r["start"], r["finished_at"]))
    return {step: tuple(found) for step, found in spans.items()}


# ------------------------------------------------------------------------------ checks


async def check_trends(
    db: DB, checks: Sequence[str], points: int = 30
) -> dict[str, tuple[float, ...]]:
    """The last `points` values of each check, oldest first (check_results_check_time_idx)."""
    rows = await db.fetch(
        """
        SELECT c.name, ARRAY(
            SELECT r.value FROM pipectl.check_results r
            WHERE r.check_name = c.name AND r.value IS NOT NULL
            ORDER BY r.observed_at DESC LIMIT $2
        ) AS values
        FROM unnest($1::text[]) AS c(name)
        """,
        list(checks),
        points,
    )
    return {r["name"]: tuple(reversed(r["values"])) for r in rows}


@dataclass(frozen=True)
class ResultExtras:
    """What the latest result judged against: its threshold and baseline."""

    threshold: dict[str, Any]
    baseline: dict[str, Any]
    trigger: str
    duration_ms: float | None


@dataclass(frozen=True)
class CheckDetail:
    state: CheckState
    results: tuple[ResultRow, ...]
    samples: tuple[Sample, ...]
    latest: ResultExtras | None


async def check_detail(db: DB, check: str, since: datetime, limit: int = 120) -> CheckDetail | None:
    """One check with its recent results and its own sample series since `since`."""
    states = await check_states(db, [check])
    if not states:
        return None
    results = await recent_results(db, check, limit)
    samples = await read_series(db, check, since, limit=2000)
    row = await db.fetchrow(
        """
        SELECT threshold, baseline, trigger, duration_ms FROM pipectl.check_results
        WHERE check_name = $1 ORDER BY observed_at DESC LIMIT 1
        """,
        check,
    )
    latest = ResultExtras(**dict(row)) if row else None
    return CheckDetail(states[0], tuple(results), tuple(samples), latest)


# ------------------------------------------------------------------------------ cache


@dataclass(frozen=True)
class CacheLevel:
    level: str
    hits: float
    lookups: float

    @property
    def ratio(self) -> float | None:
        return self.hits / self.lookups if self.lookups > 0 else None


@dataclass(frozen=True)
class CachePoint:
    at: datetime
    ratio: float | None
    levels: tuple[CacheLevel, ...] = ()


@dataclass(frozen=True)
class CacheSeries:
    """One cache check: where it measures, its target, its latest reading and its history."""

    check: str
    source: str
    status: CheckStatus
    warn_below: float
    fail_below: float
    latest: CachePoint | None
    points: tuple[CachePoint, ...] = ()


@dataclass(frozen=True)
class CacheCheckInfo:
    name: str
    source: str
    status: CheckStatus
    warn_below: float
    fail_below: float


CacheFloors = Callable[[str, Mapping[str, Any]], tuple[float, float]]
"""(source, published definition) -> the warn and fail floors the checks engine applies."""


async def cache_checks(db: DB, floors: CacheFloors) -> list[CacheCheckInfo]:
    """Enabled cache checks with their source and floors."""
    rows = await db.fetch(
        """
        SELECT c.name, c.status, c.definition, c.target,
               (SELECT r.baseline->>'source' FROM pipectl.check_results r
                 WHERE r.check_name = c.name ORDER BY r.observed_at DESC LIMIT 1) AS seen_source
        FROM pipectl.checks c WHERE c.enabled AND c.kind = 'cache' ORDER BY c.name
        """
    )
    found = []
    for r in rows:
        definition = r["definition"] if isinstance(r["definition"], dict) else {}
        source = str(definition.get("source") or r["seen_source"] or r["target"] or "cache")
        warn, fail = floors(source, definition)
        found.append(CacheCheckInfo(r["name"], source, CheckStatus(r["status"]), warn, fail))
    return found


# The per-level counters a cache result may carry: baseline.levels = {level: {hits, lookups}}.
_LEVELS = """
jsonb_each(CASE WHEN jsonb_typeof(r.baseline->'levels') = 'object' THEN r.baseline->'levels'
                ELSE '{}'::jsonb END) AS l(level, counts)
"""
# The same, skipping what is not a number: for a handful of rows the guard costs nothing.
_HITS_GUARDED = """
sum(CASE WHEN jsonb_typeof(l.counts->'hits') = 'number'
         THEN (l.counts->'hits')::float8 END) AS hits,
sum(CASE WHEN jsonb_typeof(l.counts->'lookups') = 'number'
         THEN (l.counts->'lookups')::float8 END) AS lookups
"""


async def cache_latest(db: DB, floors: CacheFloors) -> list[CacheSeries]:
    """Each cache check's latest reading with its levels (for the overview's tiles)."""
    infos = await cache_checks(db, floors)
    latest = await _latest_points(db, [i.name for i in infos])
    return [_series(info, latest.get(info.name), ()) for info in infos]


async def _latest_points(db: DB, names: Sequence[str]) -> dict[str, CachePoint]:
    rows = await db.fetch(
        f"""
        SELECT c.name, r.observed_at, r.value, l.level, {_HITS_GUARDED}
        FROM unnest($1::text[]) AS c(name)
        CROSS JOIN LATERAL (
            SELECT observed_at, value, baseline FROM pipectl.check_results
            WHERE check_name = c.name ORDER BY observed_at DESC LIMIT 1
        ) r
        LEFT JOIN LATERAL {_LEVELS} ON true
        GROUP BY c.name, r.observed_at, r.value, l.level
        ORDER BY c.name, l.level
        """,
        list(names),
    )
    latest: dict[str, CachePoint] = {}
    for r in rows:
        point = latest.get(r["name"]) or CachePoint(r["observed_at"], r["value"])
        if r["level"] is not None:
            level = CacheLevel(r["level"], r["hits"] or 0.0, r["lookups"] or 0.0)
            point = CachePoint(point.at, point.ratio, (*point.levels, level))
        latest[r["name"]] = point
    return latest


async def cache_history(
    db: DB, since: datetime, until: datetime, bucket: timedelta, floors: CacheFloors
) -> list[CacheSeries]:
    """Hit ratios of every cache check over [since, until), averaged per bucket, with each
    level's ratio per bucket.

    Read from the sample series the checks write (`<check>` for the ratio judged,
    `<check>:<level>` for each level): primary-key range scans, aggregated in PostgreSQL to
    at most one row per bucket and series, whatever the window. Buckets of whole hours read
    the hourly rollup (pipectl.samples_hourly) for the hours inside the window and raw
    samples only for the partial hours at its ends; they are aligned on the hour."""
    infos = await cache_checks(db, floors)
    names = [i.name for i in infos]
    latest = await _latest_points(db, names)
    # The level series worth reading are the ones the latest results name: one primary-key
    # range scan per series, instead of a time-index scan over every series.
    series = names + [
        f"{name}:{level.level}" for name, point in latest.items() for level in point.levels
    ]
    if _whole_hours(bucket):
        rows = await _hourly_buckets(db, series, since, until, bucket)
    else:
        rows = await db.fetch(
            """
            SELECT x.series, date_bin($3::interval, s.ts, $1) AS at,
                   avg(s.value) AS ratio, count(*) AS n
            FROM unnest($4::text[]) AS x(series)
            CROSS JOIN LATERAL (
                SELECT ts, value FROM pipectl.samples
                WHERE series = x.series AND ts >= $1 AND ts < $2
            ) s
            GROUP BY 1, 2
            """,
            since,
            until,
            bucket,
            series,
        )
    totals: dict[str, dict[datetime, float]] = {name: {} for name in names}
    levels: dict[tuple[str, datetime], list[CacheLevel]] = {}
    for r in sorted(rows, key=lambda r: (r["at"], r["series"])):
        # Check names never hold ':' (pipectl.identifiers), so the first one splits.
        name, _, level_name = r["series"].partition(":")
        if not level_name:
            totals[name][r["at"]] = r["ratio"]
        else:
            # A bucket's level ratio as hits / lookups of its samples' mean.
            level = CacheLevel(level_name, r["ratio"] * r["n"], float(r["n"]))
            levels.setdefault((name, r["at"]), []).append(level)
    points = {
        name: tuple(
            CachePoint(at, ratio, tuple(levels.get((name, at), ())))
            for at, ratio in sorted(by_time.items())
        )
        for name, by_time in totals.items()
    }
    return [_series(i, latest.get(i.name), points[i.name]) for i in infos]


def _series(
    info: CacheCheckInfo, latest: CachePoint | None, points: tuple[CachePoint, ...]
) -> CacheSeries:
    return CacheSeries(
        info.name, info.source, info.status, info.warn_below, info.fail_below, latest, points
    )


HOUR = timedelta(hours=1)


def _whole_hours(bucket: timedelta) -> bool:
    return bucket >= HOUR and bucket % HOUR == timedelta(0)


def _hour_floor(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


async def _hourly_buckets(
    db: DB, series: list[str], since: datetime, until: datetime, bucket: timedelta
) -> list[Any]:
    """Mean and count per series and bucket from the hourly rollup for the whole hours in
    [since, until) and from raw samples for the partial hours at either end. Buckets start on
    the hour; the first one is reported at `since`, where the window begins."""
    first_whole = _hour_floor(since) + (HOUR if _hour_floor(since) < since else timedelta(0))
    last_whole = _hour_floor(until)
    if first_whole >= last_whole:  # no whole hour inside: all raw
        first_whole = last_whole = until
    return await db.fetch(
        """
        SELECT x.series, greatest(date_bin($3::interval, p.ts, $4), $1) AS at,
               sum(p.total) / sum(p.n) AS ratio, sum(p.n)::float8 AS n
        FROM unnest($7::text[]) AS x(series)
        CROSS JOIN LATERAL (
            SELECT hour AS ts, n, total FROM pipectl.samples_hourly
            WHERE series = x.series AND hour >= $5 AND hour < $6
            UNION ALL
            SELECT ts, 1, value FROM pipectl.samples
            WHERE series = x.series AND ts >= $1 AND ts < $5
            UNION ALL
            SELECT ts, 1, value FROM pipectl.samples
            WHERE series = x.series AND ts >= $6 AND ts < $2
        ) p
        GROUP BY 1, 2
        """,
        since,
        until,
        bucket,
        _hour_floor(since),
        first_whole,
        last_whole,
        series,
    )


# ------------------------------------------------------------------------------ timeline


@dataclass(frozen=True)
class TimelineEntry:
    """One thing that happened: a run, an event (status change, request, agent), a cache dip."""

    at: datetime
    kind: str
    subject: str
    status: str
    actor: str
    message: str
    ref: str

    @property
    def category(self) -> str:
        """run, check, request, step, agent or cache: the first word of the kind."""
        return self.kind.split(".", 1)[0]


async def timeline(
    db: DB, since: datetime, until: datetime, *, limit: int = 500
) -> list[TimelineEntry]:
    """Runs and events (status changes, requests and their outcomes, pauses, silences,
    agents, cache dips below their target and recoveries), newest first: two index scans
    that stop after `limit` rows each, whatever the window."""
    rows = await db.fetch(
        """
        (SELECT coalesce(r.finished_at, r.started_at, r.queued_at) AS at, 'run' AS kind,
                r.step AS subject, r.status,
                coalesce(r.requested_by, a.name, '') AS actor,
                concat_ws(' ', r.trigger,
                    CASE WHEN r.attempt > 1 THEN 'attempt ' || r.attempt END,
                    CASE WHEN r.rows IS NOT NULL THEN r.rows || ' rows' END,
                    CASE WHEN r.finished_at IS NOT NULL AND r.started_at IS NOT NULL
                         THEN 'in ' || round(extract(epoch FROM r.finished_at - r.started_at)
                                             ::numeric, 2) || 's' END,
                    CASE WHEN r.error IS NOT NULL THEN '— ' || r.error END) AS message,
                'run:' || r.id AS ref
         FROM pipectl.runs r LEFT JOIN pipectl.agents a ON a.id = r.agent_id
         WHERE r.queued_at >= $1 AND r.queued_at < $2
         ORDER BY r.queued_at DESC LIMIT $3)
        UNION ALL
        (SELECT e.at, e.kind, e.subject,
                coalesce(e.detail->>'to', e.detail->>'outcome', '') AS status,
                e.actor, e.message, 'event:' || e.id AS ref
         FROM pipectl.events e
         WHERE e.at >= $1 AND e.at < $2
         ORDER BY e.at DESC LIMIT $3)
        ORDER BY at DESC, ref DESC
        LIMIT $3
        """,
        since,
        until,
        limit,
    )
    return [TimelineEntry(**dict(r)) for r in rows]


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class RequestRow:
    request: Request
    agent: str | None


async def requests_with_agents(db: DB, limit: int = 200) -> list[RequestRow]:
    """Newest requests first, with the name of the agent that claimed each."""
    return await _with_agents(db, await list_requests(db, limit))


async def request_with_agent(db: DB, request_id: int) -> RequestRow | None:
    """One request with the name of the agent that claimed it; None when it is gone."""
    request = await get_request(db, request_id)
    return None if request is None else (await _with_agents(db, [request]))[0]


async def _with_agents(db: DB, requests: list[Request]) -> list[RequestRow]:
    ids = list({r.claimed_by for r in requests if r.claimed_by is not None})
    names: dict[UUID, str] = {}
    if ids:
        rows = await db.fetch("SELECT id, name FROM pipectl.agents WHERE id = ANY($1)", ids)
        names = {r["id"]: r["name"] for r in rows}
    return [RequestRow(r, names.get(r.claimed_by) if r.claimed_by else None) for r in requests]
