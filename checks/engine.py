"""The one engine behind the agent, the console's "check now" and `pipectl check`.

`validate` checks every name the config gives against the catalog once, at start-up. `run`
probes one check in a read-only transaction under the check's own statement_timeout and
evaluates the observation; expected failures (timeout, unreachable Redis, a missing privilege,
an empty table) come back as `error` / `nodata` results, never as exceptions. Storing the
result (with hysteresis, silences and samples) is `pipectl.store.record_result`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import asyncpg

from pipectl import store
from pipectl.checks.base import SOURCE_BY_TRIGGER, C, Context, KindSpec, Riding
from pipectl.checks.catalog import Catalog, Need, load_catalog, problems_for
from pipectl.checks.registry import KINDS
from pipectl.config import CheckBase, Config, ConfigError, Problem
from pipectl.durations import format_duration
from pipectl.model import CheckResult, CheckStatus
from pipectl.resilience import safe_message, sqlstate
from pipectl.store import CheckDefinition
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from pipectl.checks.incremental import WindowCache

log = logging.getLogger(__name__)

T = TypeVar("T")


class CheckEngine:
    """Validates, describes and runs the checks of one config."""

    def __init__(self, config: Config, *, config_file: str | None = None) -> None:
        self.config = config
        self._label = config_file or "config"
        self._catalog = Catalog()
        self._validated: set[str] = set()
        self.warnings: list[str] = []
        """Things worth knowing that do not stop a check (e.g. a probe without an index)."""
        self.record_own_reads = False
        """Record what each probe looked up in pipectl.own_reads (the agent sets it; its
        role may write there), so the buffer-cache check leaves pipectl's reads out."""
        self._reads_refused = False
        self._host_keys: set[Hashable] | None = None
        self.incremental: WindowCache | None = None
        """Per-bucket partial aggregates for scheduled ticks of windowed checks (the agent
        sets it: `enable_incremental`); None reads every window whole."""

    def enable_incremental(self) -> None:
        """Scheduled ticks of the checks that allow it read only new rows (the agent's)."""
        from pipectl.checks.incremental import WindowCache  # the agent's only (loads kinds)

        self.incremental = WindowCache(self.config)

    # --- start-up ------------------------------------------------------------------------

    async def validate(self, conn: Conn, names: Sequence[str] | None = None) -> None:
        """Check every enabled check's (or the named checks') tables and columns against the
        catalog; raise ConfigError listing every problem, each naming its check."""
        problems = await self.problems(conn, names)
        if problems:
            raise ConfigError(problems)

    async def problems(self, conn: Conn, names: Sequence[str] | None = None) -> list[Problem]:
        """What `validate` raises, as a list (empty when every check is fine)."""
        return await self._validate(conn, self._select(names))

    def definitions(self) -> list[CheckDefinition]:
        """What `pipectl.checks` shows: target, probe SQL, schedule, description, config."""
        defaults = self.config.check_defaults
        out: list[CheckDefinition] = []
        for check in self.config.checks:
            spec = _kind(check)
            out.append(
                CheckDefinition(
                    name=check.name,
                    kind=check.kind,
                    target=spec.target(check),
                    sql=spec.sql(check, self.config),
                    schedule=f"every {format_duration(check.every or defaults.every)}",
                    description=spec.describe(check),
                    definition=check.model_dump(mode="json"),
                    enabled=check.enabled,
                )
            )
        return out

    def hysteresis(self, name: str) -> int:
        """Consecutive results needed before the check's shown status changes."""
        check = self.config.check(name)
        return check.hysteresis or self.config.check_defaults.hysteresis

    # --- running -------------------------------------------------------------------------

    async def run(
        self,
        name: str,
        conn: Conn,
        *,
        redis: Redis | None,
        trigger: Literal["schedule", "manual", "cli"] = "schedule",
        now: datetime | None = None,
    ) -> CheckResult:
        """Probe and evaluate one check. Raises only KeyError for a name not in the config."""
        try:
            check = self.config.check(name)
        except KeyError:
            raise KeyError(f"unknown check {name!r}") from None
        when = now or datetime.now(UTC)
        if when.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        started = time.perf_counter()
        result = await self._run(
            check, conn, redis, SOURCE_BY_TRIGGER[trigger], when, trigger == "schedule"
        )
        return replace(result, duration_ms=round((time.perf_counter() - started) * 1000, 3))

    def fusion_key(self, name: str) -> Hashable | None:
        """Checks of one instant with equal keys can share one probe (run_many); None for a
        check that probes alone. A check that can ride another kind's shared scan (`Ride`)
        has that scan's key when the config has a check that shares it."""
        check = self.config.check(name)
        key = _share_key(check)
        if key is None and (ride := _ride_key(check)) is not None:
            if self._host_keys is None:
                self._host_keys = {_share_key(c) for c in self.config.checks} - {None}
            return ride if ride in self._host_keys else None
        return key

    async def run_many(
        self,
        names: Sequence[str],
        conn: Conn,
        *,
        redis: Redis | None,
        trigger: Literal["schedule", "manual", "cli"] = "schedule",
        now: datetime | None = None,
    ) -> dict[str, CheckResult]:
        """Probe and evaluate several checks at one instant. Checks that read the same rows
        (equal share keys of their kind, e.g. quality rules over one table and window) share
        one probe; the rest run one by one, as `run`. A
        shared probe that fails on anything but its timeout is retried check by check, so
        each error is reported by the check that causes it."""
        when = now or datetime.now(UTC)
        if when.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        checks = {name: self.config.check(name) for name in names}  # KeyError: unknown
        results: dict[str, CheckResult] = {}
        incremental = trigger == "schedule"
        # A check the window cache answers stays off the shared scan (its partial
        # aggregates read less).
        off_scan = {c.name for c in checks.values() if self._window_cache([c], incremental)}
        for group in _shared_probe_groups(list(checks.values()), off_scan):
            results.update(
                await self._run_shared(
                    group, conn, SOURCE_BY_TRIGGER[trigger], when, trigger == "schedule"
                )
            )
        for name in checks:
            if name not in results:
                results[name] = await self.run(name, conn, redis=redis, trigger=trigger, now=when)
        return {name: results[name] for name in checks}

    def probe_units(self, names: Sequence[str]) -> list[list[str]]:
        """`names` as independent units of work, in the order first named: the checks that
        can share a probe together, every other check alone. Units have nothing in common, so
        they may run at the same time, each on its own connection (see run_all)."""
        units: dict[tuple[Any, ...], list[str]] = {}
        for name in dict.fromkeys(names):
            key = self.fusion_key(name)  # KeyError: unknown
            units.setdefault(("alone", name) if key is None else ("shared", key), []).append(name)
        return list(units.values())

    async def run_all(
        self,
        names: Sequence[str],
        pool: asyncpg.Pool,
        *,
        redis: Redis | None,
        trigger: Literal["schedule", "manual", "cli"] = "schedule",
        now: datetime | None = None,
        record: Callable[[Conn, CheckResult], Awaitable[None]] | None = None,
    ) -> dict[str, CheckResult]:
        """run_many with its probe units at the same time, each on a connection of its own
        from `pool` (whose size bounds how many run at once), so that one slow probe (a
        duplicate check grouping a big table) does not hold up the checks behind it.
        `record(conn, result)` stores each result on the connection that probed it. Every
        unit is waited for; then the first exception, if any, is raised."""
        when = now or datetime.now(UTC)
        if when.tzinfo is None:
            raise ValueError("now must be timezone-aware")

        async def unit(members: list[str]) -> dict[str, CheckResult]:
            async with pool.acquire() as conn:
                found = await self.run_many(members, conn, redis=redis, trigger=trigger, now=when)
                if record is not None:
                    for result in found.values():
                        await record(conn, result)
                return found

        merged = await gather_units(self.probe_units(names), unit)
        return {name: merged[name] for name in dict.fromkeys(names)}

    async def _run_shared(
        self, group: list[CheckBase], conn: Conn, source: str, now: datetime, incremental: bool
    ) -> dict[str, CheckResult]:
        members = []
        for check in group:
            if check.name in self._validated or not await self._validate(conn, [check]):
                members.append(check)
        hosts = [c for c in members if _share_key(c) is not None]
        riders = [
            Riding(c, ride)
            for c in members
            if _share_key(c) is None and (ride := _kind(c).ride) is not None
        ]
        if len(members) < 2 or not hosts:
            return {}  # run() reports the problems of the others
        timeout = max(self._timeout(c) for c in members)
        context = self._context(hosts[0], conn, now, source, timeout)
        run_shared = _kind(hosts[0]).run_shared
        assert run_shared is not None  # _shared_probe_groups groups only kinds that share
        started = time.perf_counter()
        reads: list[store.Reads] | None = [] if self.record_own_reads else None
        try:
            async with _probe_transaction(conn, timeout, reads):
                window_cache = None if riders else self._window_cache(members, incremental)
                found = None
                if window_cache is not None:
                    from pipectl.checks.incremental import NotIncremental  # loaded with it

                    with contextlib.suppress(NotIncremental):
                        found = await window_cache.run_many(context, members)
                if found is None:
                    found = await run_shared(context, hosts, riders)
        except asyncpg.QueryCanceledError:
            message = (
                f"probe cancelled: the probe shared by {len(members)} checks ran longer than"
                f" its timeout ({format_duration(timeout)})"
            )
            return {c.name: _error(c.name, now, message) for c in members}
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # One by one, each check reports what concerns it (or the connection problem).
            log.info(
                "shared probe of %s failed (%s); running them one by one",
                ", ".join(c.name for c in members),
                _describe(exc) if isinstance(exc, asyncpg.PostgresError) else exc,
            )
            return {}
        except Exception:  # a bug: say where, and let each check run on its own
            log.exception("shared probe of %s failed unexpectedly", [c.name for c in members])
            return {}
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        await self._record_reads(conn, f"check {members[0].name}", reads)
        results = {}
        for check, result in zip([*hosts, *(r.check for r in riders)], found, strict=True):
            shared = {**result.baseline, "probe_shared_by": len(members)}
            results[check.name] = replace(result, duration_ms=elapsed, baseline=shared)
        return results

    async def _run(
        self,
        check: CheckBase,
        conn: Conn,
        redis: Redis | None,
        source: str,
        now: datetime,
        incremental: bool = False,
    ) -> CheckResult:
        timeout = self._timeout(check)
        try:
            if check.name not in self._validated:
                problems = await self._validate(conn, [check])
                if problems:
                    return _error(
                        check.name, now, "; ".join(f"{p.path}: {p.message}" for p in problems)
                    )
            context = self._context(check, conn, now, source, timeout, redis)
            reads: list[store.Reads] | None = [] if self.record_own_reads else None
            async with _probe_transaction(conn, timeout, reads):
                window_cache = self._window_cache([check], incremental)
                found = None
                if window_cache is not None:
                    from pipectl.checks.incremental import NotIncremental  # loaded with it

                    with contextlib.suppress(NotIncremental):
                        found = await window_cache.run(context)
                result = found if found is not None else await _kind(check).run(context)
            await self._record_reads(conn, f"check {check.name}", reads)
            return result
        except asyncpg.QueryCanceledError:
            message = (
                f"probe cancelled: it ran longer than its timeout ({format_duration(timeout)})"
            )
            return _error(check.name, now, message)
        except asyncpg.PostgresError as exc:
            if type(exc) is asyncpg.DataError:  # raised by asyncpg encoding a parameter
                self._validated.discard(check.name)
                message = (
                    "a parameter no longer fits its column (did its type change?); "
                    "the catalog is read again on the next run"
                )
                return _error(check.name, now, message)
            if str(getattr(exc, "sqlstate", "")).startswith("42"):
                self._validated.discard(check.name)  # names or types changed: look again
            return _error(check.name, now, f"probe failed: {_describe(exc)}")
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            return _error(
                check.name, now, f"database connection problem: {type(exc).__name__}: {exc}"
            )
        except Exception as exc:  # a bug: keep the agent going, say where to look
            log.exception("check %s failed unexpectedly", check.name)
            return _error(check.name, now, f"internal error ({type(exc).__name__}); see the log")

    # --- helpers -------------------------------------------------------------------------

    def _window_cache(self, checks: Sequence[CheckBase], incremental: bool) -> WindowCache | None:
        """The partial aggregates, when this run may use them for every one of `checks`."""
        found = self.incremental
        if not incremental or found is None or not all(found.covers(c) for c in checks):
            return None
        return found

    async def _record_reads(self, conn: Conn, what: str, reads: list[store.Reads] | None) -> None:
        """Store what a probe looked up; a failure costs only the correction, never the
        check's result (said once in the log)."""
        if not reads:
            return
        try:
            await store.record_own_reads(conn, what, reads[0])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if not self._reads_refused:
                self._reads_refused = True
                log.warning(
                    "could not record pipectl's own reads (%s); the buffer-cache check counts"
                    " them until this works",
                    _describe(exc) if isinstance(exc, asyncpg.PostgresError) else exc,
                )
        else:
            self._reads_refused = False

    def _timeout(self, check: CheckBase) -> timedelta:
        return check.timeout or self.config.check_defaults.timeout

    def _context(
        self,
        check: C,
        conn: Conn,
        now: datetime,
        source: str,
        timeout: timedelta,
        redis: Redis | None = None,
    ) -> Context[C]:
        return Context(
            check=check,
            config=self.config,
            conn=conn,
            now=now,
            source=source,
            catalog=self._catalog,
            timeout=timeout,
            redis=redis,
        )

    def _select(self, names: Sequence[str] | None) -> list[CheckBase]:
        if names is None:
            return [c for c in self.config.checks if c.enabled]
        return [self.config.check(n) for n in names]

    async def _validate(self, conn: Conn, checks: Sequence[CheckBase]) -> list[Problem]:
        needs = {check.name: _kind(check).needs(check) for check in checks}
        relations = {need.relation for found in needs.values() for need in found}
        catalog = await load_catalog(conn, relations)
        self._catalog = self._catalog.merged(catalog)
        problems: list[Problem] = []
        for check in checks:
            found = problems_for(needs[check.name], catalog)
            if not found:
                found = _kind(check).check_values(check, catalog)
            if not found:
                found = _kind(check).check_config(check, self.config)
            if found:
                problems.extend(
                    Problem(self._label, None, f"checks.{check.name}.{path}", message)
                    for path, message in found
                )
                self._validated.discard(check.name)
                continue
            self._validated.add(check.name)
            self._note_missing_indexes(check.name, needs[check.name], catalog)
        return problems

    def _note_missing_indexes(self, name: str, needs: list[Need], catalog: Catalog) -> None:
        for need in needs:
            if not need.indexed or need.column is None:
                continue
            column = catalog.table(need.relation).column(need.column)
            if not column.indexed:
                advice = need.index_hint or "CREATE INDEX on it"
                warning = (
                    f"checks.{name}.{need.path}: {need.relation}.{need.column} has no index, "
                    f"so this probe reads the whole table; consider {advice}"
                )
                if warning not in self.warnings:
                    self.warnings.append(warning)
                    log.warning("%s", warning)


async def gather_units(
    units: Sequence[list[str]], run_unit: Callable[[list[str]], Awaitable[dict[str, T]]]
) -> dict[str, T]:
    """Run every probe unit at the same time and merge what they return. Every unit is
    waited for (none is left running half-recorded); then the first exception, if any, is
    raised."""
    outcomes = await asyncio.gather(*(run_unit(u) for u in units), return_exceptions=True)
    merged: dict[str, T] = {}
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        merged.update(outcome)
    return merged


def _kind(check: CheckBase) -> KindSpec[Any]:
    """The kind of a parsed check: registered, or the config could not have been parsed."""
    return KINDS[check.kind]


def _share_key(check: CheckBase) -> Hashable | None:
    """The kind and its share key: checks of different kinds never share a probe."""
    spec = _kind(check)
    if spec.run_shared is None:
        return None
    key = spec.share_key(check)
    return None if key is None else (check.kind, key)


def _ride_key(check: CheckBase) -> Hashable | None:
    """The share key of the scans that can answer `check` (its kind's `Ride`), if any."""
    ride = _kind(check).ride
    return None if ride is None else ride.host_key(check)


def _shared_probe_groups(
    checks: list[CheckBase], off_scan: Collection[str] = ()
) -> list[list[CheckBase]]:
    """Checks grouped by the rows they read, then the checks that ride a group's scan (those
    not named `off_scan`) after its own; only groups of two or more share a probe."""
    groups: dict[Hashable, list[CheckBase]] = {}
    for check in checks:
        if (key := _share_key(check)) is not None:
            groups.setdefault(key, []).append(check)
    for check in checks:
        ride = _ride_key(check)
        if ride in groups and _share_key(check) is None and check.name not in off_scan:
            groups[ride].append(check)
    return [members for members in groups.values() if len(members) > 1]


@asynccontextmanager
async def _probe_transaction(
    conn: Conn, limit: timedelta, reads: list[store.Reads] | None = None
) -> AsyncIterator[None]:
    """Read-only, with a statement_timeout that ends with the transaction. With `reads`,
    what the probe looked up (per relation) is appended to it when the probe succeeds."""
    async with conn.transaction(readonly=True):
        milliseconds = max(int(limit.total_seconds() * 1000), 1)
        await conn.execute(f"SET LOCAL statement_timeout = {milliseconds}")
        before: store.Reads = {}
        if reads is not None:
            await store.measure_own_reads(conn)
            before = await store.pending_reads(conn)
        yield
        if reads is not None:
            reads.append(store.reads_between(before, await store.pending_reads(conn)))


def _error(name: str, now: datetime, message: str) -> CheckResult:
    return CheckResult(name, CheckStatus.ERROR, None, message, now)


def _describe(exc: asyncpg.PostgresError) -> str:
    """A database error without row values (resilience.safe_message decides): data errors
    are named, not quoted."""
    state = sqlstate(exc) or "?????"
    return f"{safe_message(exc) or type(exc).__name__} (SQLSTATE {state})"
