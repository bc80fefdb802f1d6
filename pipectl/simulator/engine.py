"""`ApesSimulator`: APES' activity, live or as history, with faults on demand.

The live run is three loops that never give up: the writer (rows into PostgreSQL, one
short transaction per table per tick), the cache traffic (GET/SET against Redis) and the
control listener (faults sent over NOTIFY). A loop that loses its server logs it once, backs
off and reconnects; stopping cancels all three and releases every fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.exceptions

from pipectl.identifiers import Relation
from pipectl.listen import Listener
from pipectl.resilience import Backoff, Outage, close_quietly, describe, is_connection_loss
from pipectl.simulator import backfill as history
from pipectl.simulator import broken, combos, faults
from pipectl.simulator.cache import CacheCounters, CacheTraffic
from pipectl.simulator.catalog import RULES, RuleSpec, rule_spec
from pipectl.simulator.control import (
    CHANNEL,
    LISTENER_APPLICATION,
    ControlError,
    ControlMessage,
    parse_message,
)
from pipectl.simulator.faults import ActiveFault, Effects, FaultError, effects_of
from pipectl.simulator.lock import LockHolder
from pipectl.simulator.rhythm import FEEDS, REDIS_PEAK_OPS, poisson, redis_weight, weight
from pipectl.simulator.rows import (
    Batch,
    Observation,
    RowFactory,
    dumps,
    naive_utc,
    uniform_times,
)
from pipectl.sqlfiles import sql_dir

log = logging.getLogger("pipectl.simulator")

WRITER_APPLICATION = "pipectl-simulator"
TICK_S = 0.5
MAX_TICK_S = 2.0  # after a pause, do not make up for lost time in one burst
WRITER_STOP_TIMEOUT_S = 10.0  # how long a stop waits for the writer's tick to end
CONNECT_TIMEOUT_S = 5.0
REQUEST_HIT_TARGET = 0.8  # prompt_improvement: a GET finds the cached improvement
L1_SHARE = 0.30  # requests answered from the in-process cache (no Redis round trip)
STORM_L1_SHARE = 0.02
L3_SHARE_OF_MISSES = 0.35  # misses of Redis answered from the database's stored result
STORM_L3_SHARE_OF_MISSES = 0.1  # in a storm that store is cold too
REQUIRED_TABLES = (*FEEDS, "rule_metadata")
INITIAL_REVISION = "3f2a9c1d7b4e"  # alembic_version of a fresh APES database
SESSION_DUE_SQL = """
SELECT id, original_prompt
FROM public.improvement_sessions
WHERE status = 'active'
  AND started_at <= $1::timestamp - make_interval(secs => CASE
        WHEN jsonb_typeof(session_metadata -> 'planned_duration_s') = 'number'
        THEN (session_metadata ->> 'planned_duration_s')::float8 ELSE 300 END)
ORDER BY started_at
LIMIT 500
"""
SESSION_CLOSE_SQL = """
UPDATE public.improvement_sessions
SET status = $2, final_prompt = $3, rules_applied = $4::jsonb, iteration_count = $5,
    total_improvement_score = $6, completed_at = $7,
    session_metadata = CASE WHEN jsonb_typeof(session_metadata) = 'object'
                            THEN session_metadata ELSE '{}'::jsonb END || $8::jsonb
WHERE id = $1 AND status = 'active'
"""


class SimulatorError(RuntimeError):
    """The database cannot host the simulation (say, half of the APES schema is missing)."""


@dataclass(frozen=True)
class SimulatorStats:
    """What live runs of this simulator committed so far (the backfill reports its own)."""

    ticks: int
    rows: dict[str, int]  # rows inserted per table
    updates: dict[str, int]  # rows updated in place per table
    out_of_range: dict[str, int]  # "table.column" -> rows written with an out-of-range value
    nulls: dict[str, int]  # "table.column" -> NULLs written there
    cache_levels: dict[str, int]  # cache_hit_level values recorded (L1, L2, L3, MISS)
    cache: CacheCounters
    reconnects: int


@dataclass
class _Tally:
    ticks: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)
    out_of_range: Counter[str] = field(default_factory=Counter)
    nulls: Counter[str] = field(default_factory=Counter)
    levels: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0

    def written(self, batch: Batch) -> None:
        self.rows[batch.table] += len(batch.records)
        self.out_of_range.update(batch.out_of_range)
        self.nulls.update(batch.nulls)


async def apes_tables_present(conn: asyncpg.Connection) -> set[str]:
    """Which of the tables the simulator writes exist in `public` (plain or partitioned)."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        " AND c.relname = ANY($1::text[])",
        list(REQUIRED_TABLES),
    )
    return {row["relname"] for row in rows}


class ApesSimulator:
    """Writes APES activity into `dsn` and cache traffic into `redis_url`.

    `rate` multiplies every activity rate. `rhythm=False` makes live activity flat at the
    weekday peak instead of following the time of day (tests that must not depend on the
    hour they run at); the backfill always follows the rhythm. `seed` makes the data
    reproducible (identifiers excepted: they are always unique).
    """

    def __init__(
        self,
        dsn: str | None,
        redis_url: str | None,
        *,
        seed: int | None = None,
        rate: float = 1.0,
        rhythm: bool = True,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.dsn = dsn
        self.redis_url = redis_url
        self.rate = rate
        self.rhythm = rhythm
        self._seeds = random.Random(seed)
        self._rng = random.Random(self._seeds.getrandbits(64))
        self._rules: list[RuleSpec] = []
        self._factory: RowFactory | None = None
        self._faults: dict[str, ActiveFault] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._lock: LockHolder | None = None
        self._kept_rules: frozenset[str] | None = None
        """While broken_input lasts: the rules whose new rule_performance rows are written."""
        self._tally = _Tally()
        self._cache: CacheTraffic | None = None
        self._listener: Listener | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # Set when run() is asked to stop: the writer finishes its tick (rows written and
        # tallied together) instead of being cancelled between a COPY and its tally.
        self._stopping = asyncio.Event()
        self._outages: dict[str, Outage] = {}
        # When the faults last changed: a tick never dates rows made under the new faults
        # before that moment.
        self._changed_at = datetime.fromtimestamp(0, UTC)

    # -- connections and set-up -------------------------------------------------------------

    async def _connect(
        self, application: str, settings: dict[str, str] | None = None
    ) -> asyncpg.Connection:
        """A session in UTC (the `updated_at` triggers use now()), named for pg_stat_activity."""
        server_settings = {"application_name": application, "TimeZone": "UTC"}
        server_settings.update(settings or {})
        return await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=server_settings
        )

    async def setup(self) -> None:
        """Make sure the APES tables exist (loading sql/apes/schema.sql into a database that
        has none of them) and that rule_metadata holds the rule catalogue. Idempotent."""
        conn = await self._connect(WRITER_APPLICATION)
        try:
            await self._ensure_schema(conn)
            await conn.executemany(
                "INSERT INTO public.rule_metadata (rule_id, rule_name, rule_category,"
                " rule_description, default_parameters, priority)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT (rule_id) DO NOTHING",
                [
                    (
                        r.rule_id,
                        r.rule_name,
                        r.category,
                        r.description,
                        dumps(r.default_parameters),
                        r.priority,
                    )
                    for r in RULES
                ],
            )
            await self._load_rules(conn)
            await broken.repair_input(conn)  # left set aside by a simulator that stopped
            if await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
                await conn.execute(
                    "INSERT INTO public.alembic_version (version_num) SELECT $1"
                    " WHERE NOT EXISTS (SELECT 1 FROM public.alembic_version)",
                    INITIAL_REVISION,
                )
        finally:
            await conn.close()

    async def deploy(self, version: str | None = None) -> tuple[str | None, str]:
        """What a deploy does to the database: Alembic moves `alembic_version` to the new
        revision. Returns (old, new)."""
        new = version or f"{self._rng.getrandbits(48):012x}"
        conn = await self._connect(WRITER_APPLICATION)
        try:
            async with conn.transaction():
                old = await conn.fetchval("SELECT max(version_num) FROM public.alembic_version")
                await conn.execute("DELETE FROM public.alembic_version")
                await conn.execute(
                    "INSERT INTO public.alembic_version (version_num) VALUES ($1)", new
                )
        finally:
            await conn.close()
        log.warning("deploy: alembic_version %s -> %s", old, new)
        return old, new

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        present = await apes_tables_present(conn)
        missing = [t for t in REQUIRED_TABLES if t not in present]
        if not missing:
            return
        if len(missing) < len(REQUIRED_TABLES):
            raise SimulatorError(
                f"the APES schema is incomplete: {', '.join(missing)} missing in public; "
                "the simulator writes to all of them"
            )
        log.info("no APES tables found: loading sql/apes/schema.sql")
        async with conn.transaction():
            await conn.execute((sql_dir() / "apes" / "schema.sql").read_text(encoding="utf-8"))

    async def _load_rules(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            "SELECT rule_id, rule_name, rule_category FROM public.rule_metadata"
            " WHERE enabled IS NOT FALSE ORDER BY priority DESC NULLS LAST, rule_id"
        )
        specs = [rule_spec(r["rule_id"], r["rule_name"], r["rule_category"]) for r in rows]
        self._rules = [
            spec
            if spec.rule_name == row["rule_name"]
            else replace(spec, rule_name=row["rule_name"])
            for spec, row in zip(specs, rows, strict=True)
        ] or list(RULES)
        self._factory = RowFactory(self._rng, self._rules)

    @property
    def _rows(self) -> RowFactory:
        if self._factory is None:
            self._factory = RowFactory(self._rng, RULES)
        return self._factory

    # -- history ----------------------------------------------------------------------------

    async def backfill(
        self,
        days: int = 30,
        *,
        progress: Callable[[int, int], None] | None = None,
        now: datetime | None = None,
        force: bool = False,
    ) -> history.BackfillReport:
        """Write `days` of history up to `now` (default: the current time).

        Skipped when rule_performance already holds rows older than an hour (so a second
        call, or a restarted demo, adds nothing) unless `force`. When only fresh live rows
        exist, history ends where they begin. `progress(done, total)` is called per chunk.
        """
        if days <= 0:
            raise ValueError(f"days must be positive, got {days!r}")
        end = now or datetime.now(UTC)
        if end.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        start = end - timedelta(days=days)
        await self.setup()
        conn = await self._connect(WRITER_APPLICATION)
        try:
            if not force and await history.has_history(conn, end):
                log.info("backfill skipped: history is already present")
                return history.BackfillReport(
                    skipped=True, start=start, end=end, reason="history already present"
                )
            earliest = None if force else await history.earliest_activity(conn)
            if earliest is not None and earliest < end:
                end = earliest
            log.info("backfill from %s to %s", start.isoformat(), end.isoformat())
            report = await history.write_history(
                conn, self._rows, start=start, end=end, now=end, rate=self.rate, progress=progress
            )
        finally:
            await conn.close()
        log.info(
            "backfill wrote %d rows in %.1fs",
            report.total_rows,
            report.seconds,
            extra={"rows": report.rows},
        )
        return report

    # -- faults -----------------------------------------------------------------------------

    async def inject(self, fault: str, *, duration: timedelta | None = None, **params: Any) -> None:
        """Start `fault` (replacing an active one of that name) for `duration` (None: until
        cleared). Raises FaultError for unknown names, bad parameters or a bad relation."""
        normalized = faults.validate(fault, params)
        if duration is not None and duration.total_seconds() <= 0:
            raise FaultError("duration must be positive")
        if fault in self._faults:
            await self._end(fault, "replaced")
        if fault == "lock":
            holder = LockHolder(self._connect, Relation.parse(normalized["relation"]))
            await holder.start()
            self._lock = holder
        if fault == "deploy":
            _, normalized["version"] = await self.deploy(normalized["version"])
        if fault == "broken_input":
            conn = await self._connect(WRITER_APPLICATION)
            try:
                self._kept_rules = await broken.kept_rules(conn, int(normalized["keep"]))
                await broken.break_input(conn, self._kept_rules)
            finally:
                await conn.close()
        started = datetime.now(UTC)
        active = ActiveFault(fault, normalized, started, started + duration if duration else None)
        self._faults[fault] = active
        self._changed_at = started
        if duration is not None:
            self._timers[fault] = asyncio.create_task(
                self._expire(active, duration.total_seconds()), name=f"fault {fault} expiry"
            )
        log.warning("fault started: %s", active.describe(), extra={"fault": fault})

    async def clear(self, fault: str | None = None) -> None:
        """Stop `fault`, or every active fault when None."""
        names = list(self._faults) if fault is None else [faults.validate_name(fault)]
        for name in names:
            if name not in self._faults:
                log.info("fault %s is not active; nothing to clear", name)
                continue
            await self._end(name, "cleared")

    def active_faults(self) -> dict[str, datetime | None]:
        """Active faults: name -> when they expire (None: until cleared)."""
        now = datetime.now(UTC)
        return {
            name: f.expires_at
            for name, f in self._faults.items()
            if f.expires_at is None or f.expires_at > now
        }

    async def _expire(self, active: ActiveFault, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._faults.get(active.name) is active:
            self._timers.pop(active.name, None)  # this task: do not cancel it
            await self._end(active.name, "expired")

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _end(self, name: str, reason: str) -> None:
        active = self._faults.pop(name, None)
        self._changed_at = datetime.now(UTC)
        self._cancel_timer(name)
        if name == "lock" and self._lock is not None:
            holder, self._lock = self._lock, None
            await holder.release()
        if name == "broken_input":
            self._kept_rules = None
            conn = await self._connect(WRITER_APPLICATION)
            try:
                await broken.repair_input(conn)
            finally:
                await conn.close()
        if active is not None:
            log.warning("fault stopped (%s): %s", reason, active.name, extra={"fault": name})

    def _outage(self, what: str) -> Outage:
        outage = self._outages.get(what)
        if outage is None:
            outage = self._outages[what] = Outage(what, log)
        return outage

    def _effects(self) -> Effects:
        return effects_of(self._faults, datetime.now(UTC))

    async def close(self) -> None:
        """Release every fault (the lock's session included); for use without `run()`."""
        for name in list(self._faults):
            await self._end(name, "simulator closed")

    # -- live run ---------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while the run is LISTENing for faults from other processes."""
        return self._listener is not None and self._listener.listening

    def stats(self) -> SimulatorStats:
        t = self._tally
        cache = self._cache.counters if self._cache else CacheCounters()
        return SimulatorStats(
            t.ticks,
            dict(t.rows),
            dict(t.updates),
            dict(t.out_of_range),
            dict(t.nulls),
            dict(t.levels),
            CacheCounters(**vars(cache)),
            t.reconnects,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Live activity until `stop` is set. Server outages are logged and outlived."""
        log.info("simulator running (rate x%g)", self.rate)
        if self.redis_url:
            self._cache = CacheTraffic(self.redis_url, random.Random(self._seeds.getrandbits(64)))
        loops = [self._writer_loop(), self._control_loop()]
        if self._cache is not None:
            loops.append(self._cache_loop(self._cache))
        self._stopping.clear()
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            await asyncio.wait(tasks[:1], timeout=WRITER_STOP_TIMEOUT_S)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for pending in list(self._pending):
                pending.cancel()
            await self.close()
            if self._cache is not None:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await self._cache.close()
            log.info("simulator stopped")

    async def _forever(
        self,
        what: str,
        session: Callable[[Outage], Awaitable[None]],
        *,
        expected: tuple[type[BaseException], ...],
    ) -> None:
        """Run `session` again and again: expected failures back off quietly, others are
        logged with their traceback; a stop (or cancellation) ends the loop."""
        backoff = Backoff()
        outage = Outage(what, log)
        while not self._stopping.is_set():
            try:
                await session(outage)
            except asyncio.CancelledError:
                raise
            except expected as exc:
                outage.failed(exc)
            except Exception:
                log.exception("%s: unexpected error; carrying on", what)
            else:
                backoff.reset()
            if self._stopping.is_set():
                return
            await backoff.sleep()

    # writer ---------------------------------------------------------------------------------

    async def _writer_loop(self) -> None:
        await self._forever(
            "PostgreSQL (simulator writes)", self._writer_session, expected=_PG_ERRORS
        )

    async def _writer_session(self, outage: Outage) -> None:
        if not self._rules:
            await self.setup()
        conn = await self._connect(
            WRITER_APPLICATION, {"lock_timeout": "3s", "statement_timeout": "30s"}
        )
        try:
            if outage.recovered():
                self._tally.reconnects += 1
            last = time.monotonic()
            while not self._stopping.is_set():
                began = time.monotonic()
                seconds = min(began - last, MAX_TICK_S)
                last = began
                await self._tick(conn, seconds)
                pause = max(0.0, TICK_S - (time.monotonic() - began))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
        finally:
            await close_quietly(conn)

    def _count(self, table: str, seconds: float, now: datetime, effects: Effects) -> int:
        level = weight(now) if self.rhythm else 1.0
        mean = FEEDS[table].peak_per_hour / 3600 * seconds * self.rate * level
        return poisson(self._rng, mean * effects.volume_for(table))

    async def _tick(self, conn: asyncpg.Connection, seconds: float) -> None:
        """One slice of activity: `seconds` worth of rows for every feed (less when the
        faults changed meanwhile: rows made under them are dated after the change)."""
        now = datetime.now(UTC)
        start = max(now - timedelta(seconds=seconds), self._changed_at)
        seconds = max(0.0, (now - start).total_seconds())
        effects = self._effects()
        factory = self._rows

        def times(table: str) -> list[datetime]:
            return uniform_times(self._rng, self._count(table, seconds, now, effects), start, now)

        applications, observations = factory.rule_performance(times("rule_performance"), effects)
        await self._write(conn, applications, effects)
        await self._write(conn, factory.user_feedback(times("user_feedback"), effects), effects)
        await self._requests(conn, times("prompt_improvement_sessions"), effects)
        await self._sessions(conn, times("improvement_sessions"), now, effects)
        await self._combinations(conn, observations, effects)
        patterns = factory.discovered_patterns(times("discovered_patterns"), effects)
        await self._write(conn, patterns, effects)
        self._tally.ticks += 1

    async def _guard(self, conn: asyncpg.Connection, what: str, op: Awaitable[None]) -> None:
        """Run one table's write; a failure of that write alone is logged and skipped."""
        try:
            await op
        except asyncpg.PostgresError as exc:
            if conn.is_closed() or is_connection_loss(exc):
                raise
            self._outage(what).failed(exc)
        else:
            self._outage(what).recovered()

    async def _write(self, conn: asyncpg.Connection, batch: Batch, effects: Effects) -> None:
        if not batch.records or effects.is_stalled(batch.table):
            return
        kept = self._kept_rules
        if kept is not None and batch.table == "rule_performance":
            column = list(batch.columns).index("rule_id")
            batch.records[:] = [r for r in batch.records if r[column] in kept]
            if not batch.records:
                return

        async def copy() -> None:
            await conn.copy_records_to_table(
                batch.table,
                schema_name="public",
                records=batch.records,
                columns=list(batch.columns),
            )
            self._tally.written(batch)

        await self._guard(conn, f"writing {batch.table}", copy())

    async def _requests(
        self, conn: asyncpg.Connection, times: list[datetime], effects: Effects
    ) -> None:
        """Improvement requests: each looks up the caches (really, for L2) and is recorded
        with the level that answered."""
        table = "prompt_improvement_sessions"
        if not times or effects.is_stalled(table):
            return
        levels = await self._lookup(len(times), effects.miss_storm)
        batch = self._rows.prompt_improvement(times, levels, effects)

        async def copy() -> None:
            await conn.copy_records_to_table(
                table, schema_name="public", records=batch.records, columns=list(batch.columns)
            )
            self._tally.written(batch)
            self._tally.levels.update(
                r[4] for r in batch.records if r[4] in ("L1", "L2", "L3", "MISS")
            )

        await self._guard(conn, f"writing {table}", copy())

    async def _lookup(self, count: int, storm: bool) -> list[str]:
        """Which cache level answers each of `count` requests: L1 in process, L2 if a real
        Redis GET hits, else L3 (stored result) or MISS (computed)."""
        l1_share = STORM_L1_SHARE if storm else L1_SHARE
        levels = ["L1" if self._rng.random() < l1_share else "" for _ in range(count)]
        asks = [i for i, level in enumerate(levels) if not level]
        hits = [False] * len(asks)
        if asks and self._cache is not None:
            try:
                hits = await self._cache.get_many(
                    ["prompt_improvement"] * len(asks), storm, REQUEST_HIT_TARGET
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                self._outage("Redis lookups").failed(exc)  # the application falls through
            else:
                self._outage("Redis lookups").recovered()
        l3_share = STORM_L3_SHARE_OF_MISSES if storm else L3_SHARE_OF_MISSES
        for index, hit in zip(asks, hits, strict=True):
            if hit:
                levels[index] = "L2"
            else:
                levels[index] = "L3" if self._rng.random() < l3_share else "MISS"
        return levels

    async def _sessions(
        self, conn: asyncpg.Connection, starts: list[datetime], now: datetime, effects: Effects
    ) -> None:
        """Open new sessions; close the ones whose planned time is up (in place)."""
        table = "improvement_sessions"
        if effects.is_stalled(table):
            return
        factory = self._rows
        batch = Batch(table)
        for at in starts:
            planned = factory.session_duration() / self.rate
            planned = max(planned, timedelta(seconds=0.5))
            batch.records.append(factory.session_start(at, planned, effects, batch))
        await self._write(conn, batch, effects)

        async def close_due() -> None:
            due = await conn.fetch(SESSION_DUE_SQL, naive_utc(now))
            if not due:
                return
            updates = []
            for row in due:
                outcome = factory.session_outcome(row["original_prompt"])
                done = outcome["status"] == "completed"
                extra = {"closed_by": "simulator"} if done else {"abandoned_at": now.isoformat()}
                updates.append(
                    (
                        row["id"],
                        outcome["status"],
                        outcome["final_prompt"],
                        outcome["rules_applied"],
                        outcome["iteration_count"],
                        outcome["total_improvement_score"],
                        naive_utc(now) if done else None,
                        dumps(extra),
                    )
                )
            await conn.executemany(SESSION_CLOSE_SQL, updates)
            self._tally.updates[table] += len(updates)

        await self._guard(conn, f"closing {table}", close_due())

    async def _combinations(
        self, conn: asyncpg.Connection, observations: list[Observation], effects: Effects
    ) -> None:
        table = "rule_combinations"
        if not observations or effects.is_stalled(table):
            return
        factor = effects.volume.get(table, 1.0)
        if factor != 1.0:
            count = poisson(self._rng, len(observations) * factor)
            observations = self._rng.choices(observations, k=count) if count else []
        aggregates: dict[combos.Key, combos.Combination] = {}
        combos.aggregate(observations, aggregates)

        async def merge() -> None:
            updated, inserted = await combos.upsert(conn, aggregates)
            self._tally.updates[table] += updated
            self._tally.rows[table] += inserted

        await self._guard(conn, f"updating {table}", merge())

    # cache traffic --------------------------------------------------------------------------

    async def _cache_loop(self, cache: CacheTraffic) -> None:
        warmed = False

        async def session(outage: Outage) -> None:
            nonlocal warmed
            if not warmed:
                await cache.warm()
                warmed = True
            last = time.monotonic()
            while True:
                began = time.monotonic()
                seconds = min(began - last, MAX_TICK_S)
                last = began
                effects = self._effects()
                level = redis_weight(datetime.now(UTC)) if self.rhythm else 1.0
                mean = REDIS_PEAK_OPS * seconds * self.rate * level * effects.cache_volume
                if await cache.background(poisson(self._rng, mean), effects.miss_storm):
                    outage.recovered()  # only a command that got through says so
                await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - began)))

        await self._forever(
            "Redis (simulator traffic)",
            session,
            expected=(redis.exceptions.RedisError, OSError),
        )

    # control --------------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        self._listener = Listener(
            "PostgreSQL (fault listener)",
            lambda: self._connect(LISTENER_APPLICATION),
            {CHANNEL: self._on_notify},
            logger=log,
        )
        try:
            await self._listener.run()
        finally:
            self._listener = None

    def _on_notify(self, channel: str, payload: str) -> None:
        try:
            message = parse_message(payload)
        except ControlError as exc:
            log.warning("ignored control message on %s: %s", channel, exc)
            return
        task = asyncio.create_task(self._apply(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _apply(self, message: ControlMessage) -> None:
        try:
            if message.action == "inject":
                assert message.fault is not None
                await self.inject(message.fault, duration=message.duration, **message.params)
            else:
                await self.clear(message.fault)
        except FaultError as exc:
            log.warning("ignored control message: %s", exc)
        except _PG_ERRORS as exc:
            log.warning("control message failed: %s", describe(exc))


_PG_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    ConnectionError,
    SimulatorError,
)
