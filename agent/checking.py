"""Check scheduling: each check's ticks, probes shared by checks that read the same rows, and
the results recorded with hysteresis; plus the quality scorecard export.

A check's tick is claimed by moving its `next_due` in pipectl.checks, so each tick runs on
one agent. Every tick works with the plan (and check engine) current when it started: a
reload swaps the plan, never the engine under a batch in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from opentelemetry.trace import Span

from pipectl import store
from pipectl.agent.runtime import AgentPlan, AgentRuntime
from pipectl.agent.schedule import InFlight, interval_schedule, tick_loop
from pipectl.agent.tracing import trace_id_of
from pipectl.model import CheckResult, CheckStatus, CheckTrigger
from pipectl.resilience import Outage, is_transient
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from pipectl.checks.engine import CheckEngine

log = logging.getLogger(__name__)

# How long the first of several checks ticking at one instant waits for the others to share
# its probe: their tick loops wake within milliseconds of each other.
SHARED_PROBE_WAIT = 0.05
# How far ahead of the database's clock a tick may be claimed (see store.claim_check_ticks).
CLOCK_TOLERANCE = timedelta(seconds=5)

Recorded = tuple[CheckResult, store.StoredResult]


@dataclass
class _Batch:
    """Checks that tick at one instant and share one probe; `done` is set when their run
    ended (the checks that joined wait for it, so they stay in flight until then)."""

    names: list[str]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CheckScheduler:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.scorecard_due = asyncio.Event()
        self.claims = Outage("claiming check ticks", log, clock=rt.clock)
        self.probes = Outage("running checks", log, clock=rt.clock)
        self._batches: dict[tuple[object, datetime, timedelta], _Batch] = {}
        self._in_flight = InFlight(
            "check",
            "the agent's checks are behind: slow probes, or too few connections in"
            " agent.max_parallel_checks",
            log,
            rt.clock,
            lambda name: self.rt.metrics.check_tick_skipped(name),
        )

    # ------------------------------------------------------------------ schedules

    def start(self, plan: AgentPlan) -> None:
        """One tick loop per enabled check (replacing any from an earlier plan)."""
        rt = self.rt
        rt.work.cancel_loops(("check:",))
        if plan.checks is None:
            return
        for name in plan.enabled_checks():
            every = plan.check_every(name)
            rt.work.loop(
                f"check:{name}",
                functools.partial(
                    tick_loop,
                    interval_schedule(every, every, timedelta(0)),
                    functools.partial(self._tick, name, every),
                    clock=rt.clock,
                    what=f"check {name}",
                ),
            )

    def _tick(self, name: str, every: timedelta, nominal: datetime, _late: float) -> None:
        """Dispatch the tick, unless the check's previous tick has not finished yet (its
        probe is waiting for a connection or still running): then this one is coalesced into
        it. The run in flight measures up to when it starts, and the next tick covers
        everything after; queueing a run per tick instead would, once the agent is behind,
        grow a backlog without bound (every check waiting behind every other's queued
        ticks) and drain it as runs moments apart, each judging an interval of a second."""
        if self._in_flight.admit(name, nominal):
            self.rt.work.dispatch(self._tick_in_flight(name, nominal, every))

    async def _tick_in_flight(self, name: str, nominal: datetime, every: timedelta) -> None:
        try:
            await self.on_tick(name, nominal, every)
        finally:
            self._in_flight.done(name)

    async def on_tick(self, name: str, nominal: datetime, every: timedelta) -> None:
        plan = self.rt.plan
        engine = plan.checks
        if engine is None or name not in plan.enabled_checks():
            return
        key = engine.fusion_key(name)
        if key is None:
            if await self._claim([name], nominal, every):
                await self.run_checks([name], "schedule", plan)
            return
        # Checks that read the same rows tick at the same nominal instant (interval ticks are
        # anchored to one epoch): the first to arrive waits a moment for the others, claims
        # their ticks together (so that one agent gets them all) and runs them on one scan.
        # One that arrives late starts a batch of its own; a tick is still claimed only once.
        batch_key = (key, nominal, every)
        batch = self._batches.get(batch_key)
        if batch is not None:
            batch.names.append(name)
            await batch.done.wait()
            return
        batch = self._batches[batch_key] = _Batch([name])
        try:
            try:
                await self.rt.clock.sleep(SHARED_PROBE_WAIT)
            finally:
                del self._batches[batch_key]
            claimed = await self._claim(batch.names, nominal, every)
            if claimed:
                await self.run_checks([n for n in batch.names if n in claimed], "schedule", plan)
        finally:
            batch.done.set()

    async def _claim(self, names: list[str], nominal: datetime, every: timedelta) -> set[str]:
        rt = self.rt
        # Not retried (see StepScheduler.on_tick): the next tick comes.
        try:
            claimed = await store.claim_check_ticks(
                rt.pool, names, nominal, nominal + every, CLOCK_TOLERANCE
            )
        except Exception as exc:
            self.claims.failed(exc)
            return set()
        self.claims.recovered()
        return claimed

    # ------------------------------------------------------------------ running

    async def run_checks(
        self, names: Sequence[str], trigger: CheckTrigger, plan: AgentPlan | None = None
    ) -> dict[str, CheckStatus]:
        """Run checks of one instant with the plan's engine and record each result under
        its own span; returns their statuses. Checks that read the same rows share one scan;
        the other probes run at the same time on the checks' own pool (so that slow probes
        never hold up heartbeats and bookkeeping). Every probe unit is waited for; then the
        first exception, if any, is raised."""
        plan = plan or self.rt.plan
        engine = plan.checks
        if engine is None or not names:
            return {}
        units = engine.probe_units(list(names))
        tracer = self.rt.tracer
        with tracer.start_as_current_span(_checks_title(names, units)) as outer:
            outer.set_attribute("pipectl.trigger", trigger)
            if len(units) == 1:
                done = await self._run_unit(units[0], trigger, outer, plan, engine)
            else:
                from pipectl.checks.engine import gather_units  # loaded with the engine

                done = await gather_units(
                    units,
                    functools.partial(self._run_unit_in_span, trigger=trigger, plan=plan),
                )
        for name in names:
            result, stored = done[name]
            self._after(plan, name, result, stored)
        return {name: CheckStatus(done[name][0].status) for name in names}

    async def _run_unit_in_span(
        self, unit: list[str], trigger: CheckTrigger, plan: AgentPlan
    ) -> dict[str, Recorded]:
        assert plan.checks is not None
        with self.rt.tracer.start_as_current_span(_checks_title(unit, [unit])) as span:
            span.set_attribute("pipectl.trigger", trigger)
            return await self._run_unit(unit, trigger, span, plan, plan.checks)

    async def _run_unit(
        self,
        unit: list[str],
        trigger: CheckTrigger,
        span: Span,
        plan: AgentPlan,
        engine: CheckEngine,
    ) -> dict[str, Recorded]:
        """Probe one unit (a lone check, or checks sharing a probe) on one connection and
        store its results. Retried after a lost connection: only the checks whose results
        are not stored yet run again, so no tick is recorded twice."""
        rt = self.rt
        lone = span if len(unit) == 1 else None
        done: dict[str, Recorded] = {}
        while pending := [n for n in unit if n not in done]:
            try:
                if self._on_replica(plan, pending):
                    found = await self._probe_replica(plan, engine, pending, trigger)
                    async with rt.pools.checks.acquire() as conn:
                        for name, result in found.items():
                            stored = await self._record(conn, plan, result, trigger, lone)
                            done[name] = (result, stored)
                    continue
                async with rt.pools.checks.acquire() as conn:
                    found = await engine.run_many(pending, conn, redis=rt.redis, trigger=trigger)
                    for name, result in found.items():
                        stored = await self._record(conn, plan, result, trigger, lone)
                        done[name] = (result, stored)
            except Exception as exc:
                if not is_transient(exc) or rt.stopping.is_set():
                    raise
                self.probes.failed(exc)
                await rt.clock.sleep(2)
        self.probes.recovered()
        return done

    def _on_replica(self, plan: AgentPlan, names: Sequence[str]) -> bool:
        """Probe on the replica pool: there is one (opened at start), the config still names
        a replica, and every check of the unit may read it."""
        from pipectl.checks.replica import on_replica  # loaded with the engine

        return (
            self.rt.pools.replica is not None
            and plan.config.database.replica_dsn is not None
            and all(on_replica(plan.config.check(name)) for name in names)
        )

    async def _probe_replica(
        self, plan: AgentPlan, engine: CheckEngine, names: list[str], trigger: CheckTrigger
    ) -> dict[str, CheckResult]:
        """Probe on a replica connection, judged as of its data (pipectl.checks.replica)."""
        from pipectl.checks.replica import run_on_replica

        replica = self.rt.pools.replica
        assert replica is not None
        async with replica.acquire() as conn:
            return await run_on_replica(
                engine,
                names,
                conn,
                max_lag=plan.config.database.replica_max_lag,
                redis=self.rt.redis,
                trigger=trigger,
                now=self.rt.clock.now(),
            )

    async def _record(
        self,
        conn: Conn,
        plan: AgentPlan,
        result: CheckResult,
        trigger: CheckTrigger,
        span: Span | None,
    ) -> store.StoredResult:
        """Store one result under `span` (a lone check's own span, around its probe too), or
        under a new span of its own, a child of the span of the probe it shared."""
        config = plan.config
        check = config.check(result.check)
        hysteresis = check.hysteresis or config.check_defaults.hysteresis
        with contextlib.ExitStack() as stack:
            if span is None:
                span = stack.enter_context(
                    self.rt.tracer.start_as_current_span(f"check {result.check}")
                )
            span.set_attributes(
                {
                    "pipectl.check": result.check,
                    "pipectl.check.kind": check.kind,
                    "pipectl.trigger": trigger,
                    "pipectl.outcome": str(result.status),
                }
            )
            if result.value is not None:
                span.set_attribute("pipectl.value", result.value)
            return await store.record_result(
                conn,
                result,
                hysteresis=hysteresis,
                agent_id=self.rt.identity.id,
                trigger=trigger,
                trace_id=trace_id_of(span),
            )

    def _after(
        self, plan: AgentPlan, name: str, result: CheckResult, stored: store.StoredResult
    ) -> None:
        kind = plan.config.check(name).kind
        self.rt.metrics.check_finished(kind, result)
        if kind in ("quality", "freshness"):
            self.scorecard_due.set()
        if stored.changed:
            log.info(
                "check %s: %s -> %s: %s",
                name,
                stored.previous,
                stored.status,
                result.message,
                extra={"check": name},
            )

    # ------------------------------------------------------------------ scorecard

    async def scorecard_loop(self) -> None:
        """Export the quality scorecard (completeness, accuracy, consistency, timeliness per
        table) from the results the checks stored, whenever a quality or freshness check
        recorded one; nothing is probed here. At most every 10 s."""
        from pipectl.checks import scorecard

        rt = self.rt
        outage = Outage("scorecard export", log, clock=rt.clock)
        while not rt.stopping.is_set():
            await self.scorecard_due.wait()
            self.scorecard_due.clear()
            try:
                async with rt.pool.acquire() as conn:
                    rows = await scorecard.compute(conn, rt.config)
                for row in rows:
                    for dimension in scorecard.DIMENSIONS:
                        ratio = row.ratio(dimension)
                        if ratio is not None:
                            rt.metrics.quality(row.table, dimension, ratio)
                outage.recovered()
            except Exception as exc:
                outage.failed(exc)
            await rt.clock.sleep(10)


def _checks_title(names: Sequence[str], units: Sequence[Sequence[str]]) -> str:
    """A span name: one check, checks sharing one probe, or several probe units."""
    if len(names) == 1:
        return f"check {names[0]}"
    if len(units) == 1:
        return f"checks: {len(names)} sharing a probe"
    return f"checks: {len(names)} in {len(units)} probes"
