"""The agent's engine: schedules, requests, checks, heartbeats — one asyncio process.

Everything it knows is in the pipectl schema: ticks are claimed by inserting run rows (unique
per step and tick), requests by `FOR UPDATE SKIP LOCKED`, checks by moving `next_due`. Any
number of agents can run against one database; each tick and request is handled once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import psutil
from opentelemetry.sdk.trace import TracerProvider

from pipectl import __version__, migrate, store
from pipectl.agent.bookkeeping import Bookkeeper
from pipectl.agent.dag import Dag
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.runner import RunOutcome, StepPlan, StepRunner
from pipectl.agent.schedule import Schedule, cron_schedule, interval_schedule, tick_loop
from pipectl.agent.systemd import notify
from pipectl.agent.tracing import trace_id_of, tracer_for
from pipectl.config import Config, ConfigError, LoadedConfig, Problem
from pipectl.db import connect, create_pool, is_transient
from pipectl.durations import format_duration
from pipectl.model import CheckResult, CheckStatus, CheckTrigger, Request, RunStatus, Trigger
from pipectl.store.base import Conn

if TYPE_CHECKING:
    import redis.asyncio
    from opentelemetry.trace import Span

    from pipectl.agent.requests import RequestHandler
    from pipectl.checks.engine import CheckEngine

log = logging.getLogger(__name__)

# How long the first of several checks ticking at one instant waits for the others to share
# its probe: their tick loops wake within milliseconds of each other.
SHARED_PROBE_WAIT = 0.05
REQUEST_CHANNEL = "pipectl_requests"
CHANGES_CHANNEL = "pipectl_changes"


def build_plans(config: Config) -> dict[str, StepPlan]:
    """Steps with their effective settings: the step's own value, else [defaults]."""
    d = config.defaults
    plans: dict[str, StepPlan] = {}
    for step in config.steps:
        if not step.enabled:
            continue
        grace = step.misfire_grace or d.misfire_grace
        jitter = step.jitter if step.jitter is not None else d.jitter
        schedule: Schedule | None = None
        if step.every is not None:
            schedule = interval_schedule(step.every, grace, jitter)
        elif step.cron is not None:
            schedule = cron_schedule(
                step.cron, step.timezone or config.agent.timezone, grace, jitter
            )
        plans[step.name] = StepPlan(
            config=step,
            statement_timeout=step.statement_timeout or d.statement_timeout,
            lock_timeout=step.lock_timeout or d.lock_timeout,
            retries=step.retries if step.retries is not None else d.retries,
            retry_backoff=d.retry_backoff,
            retry_backoff_max=d.retry_backoff_max,
            schedule=schedule,
        )
    return plans


def step_definitions(plans: dict[str, StepPlan]) -> list[store.StepDefinition]:
    return [
        store.StepDefinition(
            name=p.name,
            kind=p.config.kind,
            relation=str(p.config.relation) if p.config.relation else None,
            sql=p.statement_text(),
            schedule=p.schedule.text if p.schedule else None,
            depends_on=list(p.config.depends_on),
            description=p.config.description,
            definition={
                **p.config.model_dump(mode="json"),
                "effective": {
                    "statement_timeout": format_duration(p.statement_timeout),
                    "lock_timeout": format_duration(p.lock_timeout),
                    "retries": p.retries,
                },
            },
        )
        for p in plans.values()
    ]


async def validate_steps(conn: Conn, loaded: LoadedConfig) -> None:
    """Every step's relation exists and has the right kind; otherwise a ConfigError."""
    label = str(loaded.file or "config")
    problems: list[Problem] = []
    for step in loaded.config.steps:
        if step.relation is None or not step.enabled:
            continue
        kind = await conn.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = $2",
            step.relation.schema,
            step.relation.name,
        )
        path = f"steps.{step.name}.relation"
        if kind is None:
            problems.append(
                Problem(label, None, path, f"{step.relation} does not exist in the database")
            )
        elif step.kind == "matview" and kind != b"m":
            problems.append(
                Problem(
                    label,
                    None,
                    path,
                    f"{step.relation} is not a materialized view "
                    '(use kind = "view" for a plain view)',
                )
            )
        elif step.kind == "view" and kind not in (b"v", b"m"):
            problems.append(Problem(label, None, path, f"{step.relation} is not a view"))
    if problems:
        raise ConfigError(problems)


class Agent:
    """One agent process. `start()`, then `serve()` until `stop()`; or `run_once()`."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        name: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.host = socket.gethostname()
        self.name = name or self.config.agent.name or f"{self.host}:{os.getpid()}"
        self.agent_id = uuid.uuid4()
        self.metrics = AgentMetrics()
        self.tracer_provider = tracer_provider
        self.tracer = tracer_for(tracer_provider)
        self.plans = build_plans(self.config)
        self.dag = Dag([p.config for p in self.plans.values()])
        self.check_engine: CheckEngine | None = None
        self.redis: redis.asyncio.Redis | None = None
        self.pool: asyncpg.Pool | None = None
        self.runs_pool: asyncpg.Pool | None = None
        self.checks_pool: asyncpg.Pool | None = None
        self.book: Bookkeeper | None = None
        self.runner: StepRunner | None = None
        self.stopping = asyncio.Event()
        self.stopped = asyncio.Event()
        self.wake_requests = asyncio.Event()
        self.scorecard_due = asyncio.Event()
        self.runs_changed = asyncio.Condition()
        self.connected_since: float | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._work: set[asyncio.Task[Any]] = set()
        self._next_runs: dict[str, datetime] = {}
        self._listener: asyncpg.Connection | None = None
        self._executing: set[int] = set()
        self._check_batches: dict[tuple[Any, datetime, timedelta], list[str]] = {}
        self._malformed = _Throttled("ignored a malformed notification on %s (%d bytes): %s")

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Connect, verify schema and catalog, register, publish, and start every loop."""
        self.pool = await create_pool(
            self.config, min_size=0, max_size=4, application_name=f"pipectl-agent {self.name}"[:63]
        )
        self.runs_pool = await create_pool(
            self.config,
            min_size=0,
            max_size=self.config.agent.max_parallel_runs,
            application_name=f"pipectl-agent {self.name}"[:63],
        )
        # Probes get a pool of their own: slow ones must not hold up heartbeats.
        self.checks_pool = await create_pool(
            self.config,
            min_size=0,
            max_size=self.config.agent.max_parallel_checks,
            application_name=f"pipectl-agent {self.name} checks"[:63],
        )
        self.book = Bookkeeper(self.pool)
        async with self.pool.acquire() as conn:
            await migrate.ensure_current(conn)
            await validate_steps(conn, self.loaded)
            await self._prepare_checks(conn)
        self.runner = StepRunner(
            runs_pool=self.runs_pool,
            book=self.book,
            agent_id=self.agent_id,
            agent_name=self.name,
            metrics=self.metrics,
            max_parallel=self.config.agent.max_parallel_runs,
            tracer=self.tracer,
        )
        await self._register()
        self.connected_since = time.monotonic()
        await self._reap_dead_predecessors()
        await self._publish()
        self.metrics.database_reachable(True)
        log.info(
            "agent %s started: %d steps, %d checks",
            self.name,
            len(self.plans),
            len(self._enabled_checks()),
            extra={"agent_id": str(self.agent_id)},
        )

    async def _prepare_checks(self, conn: Conn) -> None:
        if not self._enabled_checks():
            return
        from pipectl.checks.engine import CheckEngine

        engine = CheckEngine(self.config)
        await engine.validate(conn)
        self.check_engine = engine
        if self.config.redis.url and self.redis is None:
            import redis.asyncio

            timeout = self.config.redis.timeout.total_seconds()
            self.redis = redis.asyncio.Redis.from_url(
                self.config.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout
            )

    def _enabled_checks(self) -> list[str]:
        return [c.name for c in self.config.checks if c.enabled]

    async def _publish(self) -> None:
        assert self.book is not None
        await self.book(store.publish_steps, step_definitions(self.plans), self.agent_id)
        if self.check_engine is not None:
            await self.book(store.publish_checks, self.check_engine.definitions(), self.agent_id)
        self.metrics.declare(
            {name: _interval(plan) for name, plan in self.plans.items()},
            [(c.name, c.kind) for c in self.config.checks if c.enabled],
        )

    async def serve(self) -> None:
        """Run until stop(): schedules, requests, checks, heartbeats, retention."""
        self._spawn_loop("heartbeat", self._heartbeat_loop)
        self._spawn_loop("listener", self._listener_loop)
        self._spawn_loop("requests", self._request_loop)
        self._spawn_loop("retention", self._retention_loop)
        if self.check_engine is not None:
            self._spawn_loop("scorecard", self._scorecard_loop)
        self._start_schedules()
        notify("READY=1", f"STATUS=serving {len(self.plans)} steps")
        await self.stopping.wait()

    def _spawn_loop(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(self._guarded(name, loop), name=name)
        self._loops[name] = task

    async def _guarded(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A loop that crashes on a bug is logged and started again after a pause: an agent
        that heartbeats but no longer claims requests would look alive and do nothing."""
        delay = 1.0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if time.monotonic() - started > 300:  # it had been running fine: start over
                    delay = 1.0
                log.exception("agent loop %s crashed; restarting it in %.0fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _start_schedules(self) -> None:
        for plan in self.plans.values():
            if plan.schedule is not None:
                self._spawn_loop(
                    f"step:{plan.name}",
                    functools.partial(
                        tick_loop,
                        plan.schedule,
                        functools.partial(self._step_tick, plan.name),
                        on_next=functools.partial(self._note_next_run, plan.name),
                    ),
                )
        if self.check_engine is None:
            return
        for check in self.config.checks:
            if not check.enabled:
                continue
            every = check.every or self.config.check_defaults.every
            schedule = interval_schedule(every, every, timedelta(0))
            self._spawn_loop(
                f"check:{check.name}",
                functools.partial(
                    tick_loop, schedule, functools.partial(self._check_tick, check.name, every)
                ),
            )

    def _step_tick(self, step: str, nominal: datetime, lateness: float) -> None:
        self._dispatch(self._on_step_tick(step, nominal, lateness))

    def _check_tick(self, check: str, every: timedelta, nominal: datetime, _late: float) -> None:
        self._dispatch(self._on_check_tick(check, nominal, every))

    def _dispatch(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Work (runs, checks, requests) lives in tasks the agent owns and cancels on stop."""
        if self.stopping.is_set():
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._work.add(task)
        task.add_done_callback(self._work_done)

    def _work_done(self, task: asyncio.Task[Any]) -> None:
        self._work.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent task failed: %r", exc, exc_info=exc)

    def _note_next_run(self, step: str, at: datetime) -> None:
        self._next_runs[step] = at
        if self.pool is not None:
            self._dispatch(self._quiet(store.set_next_run(self.pool, step, at)))

    async def _quiet(self, awaitable: Awaitable[Any]) -> None:
        """Best-effort writes (display hints such as next run time) never fail the agent."""
        with contextlib.suppress(Exception):
            await awaitable

    async def stop(self) -> None:
        """Stop scheduling, cancel running work (recorded as cancelled), deregister."""
        if self.stopping.is_set():
            await self.stopped.wait()
            return
        self.stopping.set()
        notify("STOPPING=1", "STATUS=stopping")
        deadline = time.monotonic() + max(
            2.0, self.config.agent.shutdown_timeout.total_seconds() - 2
        )
        if self.book is not None:
            self.book.give_up_at = deadline
        for task in self._loops.values():
            task.cancel()
        for task in list(self._work):
            task.cancel()
        pending = [*self._loops.values(), *self._work]
        if pending:
            _, still = await asyncio.wait(pending, timeout=max(0.5, deadline - time.monotonic()))
            if still:
                log.warning("%d tasks did not finish before the shutdown deadline", len(still))
        try:
            if self.pool is not None:
                # Whatever a cancelled task could not record is closed here: a clean stop
                # never leaves a run 'running'.
                closed = await asyncio.wait_for(
                    store.close_unfinished_runs(
                        self.pool,
                        self.agent_id,
                        RunStatus.CANCELLED,
                        "cancelled: agent shutting down",
                    ),
                    2,
                )
                if closed:
                    log.info("closed %d unfinished runs as cancelled", len(closed))
                # Requests whose tasks were cancelled before they could settle them: a
                # stopped agent is never reaped, so nobody else would.
                released, cancelled = await asyncio.wait_for(
                    store.release_claims(self.pool, self.agent_id), 2
                )
                if released or cancelled:
                    log.info(
                        "requests left at shutdown: %d handed back to the queue, %d cancelled",
                        released,
                        cancelled,
                    )
                await asyncio.wait_for(store.stop_agent(self.pool, self.agent_id), 2)
        except Exception as exc:
            log.warning("could not record the agent's stop: %s", exc)
        await self._close()
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(2000)
        self.stopped.set()
        log.info("agent %s stopped", self.name)

    async def _close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)
        for pool in (self.runs_pool, self.checks_pool, self.pool):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 3)
                except Exception:
                    pool.terminate()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    # ---------------------------------------------------------------- steps

    async def _on_step_tick(self, step: str, nominal: datetime, lateness: float) -> None:
        plan = self.plans.get(step)
        if plan is None or plan.schedule is None or self.book is None:
            return
        run_id = await self.book(store.claim_tick, step, nominal, self.agent_id)
        if run_id is None:
            return  # another agent took this tick
        grace = plan.schedule.misfire_grace.total_seconds()
        if lateness > grace:
            await self._skip(
                run_id,
                f"missed its tick by {lateness:.0f}s (misfire_grace "
                f"{format_duration(plan.schedule.misfire_grace)})",
            )
            return
        await asyncio.sleep(plan.schedule.jitter_delay())
        if reason := await self._blocked(step):
            await self._skip(run_id, reason)
            return
        if reason := await self._upstream_gate(step, nominal):
            await self._skip(run_id, reason)
            return
        outcome = await self._run(plan, run_id, Trigger.SCHEDULE)
        await self._after_success(step, outcome)

    async def _run(
        self,
        plan: StepPlan,
        run_id: int,
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
    ) -> RunOutcome:
        assert self.runner is not None
        outcome = await self.runner.run(plan, run_id, trigger, requested_by, request_id)
        await self._notify_runs_changed()
        return outcome

    async def _skip(self, run_id: int, reason: str) -> None:
        assert self.book is not None
        await self.book(store.finish_run, run_id, RunStatus.SKIPPED, error=reason)
        log.info("run %d skipped: %s", run_id, reason, extra={"run_id": run_id})

    async def _blocked(self, step: str) -> str | None:
        """A paused step does not run on schedule."""
        assert self.book is not None
        states = await self.book(store.step_states, [step])
        if states and states[0].paused:
            state = states[0]
            self.metrics.step_paused_is(step, True)
            why = f": {state.paused_reason}" if state.paused_reason else ""
            return f"paused by {state.paused_by}{why}"
        self.metrics.step_paused_is(step, False)
        return None

    async def _upstream_gate(self, step: str, nominal: datetime | None) -> str | None:
        """Wait for upstream runs in flight (and for an upstream tick due at the same time),
        then refuse to run unless every upstream's latest decisive run succeeded."""
        assert self.book is not None
        upstreams = self.dag.upstream(step)
        if not upstreams:
            return None
        for upstream in upstreams:
            plan = self.plans.get(upstream)
            limit = (plan.statement_timeout.total_seconds() * (plan.retries + 1)) if plan else 60
            deadline = time.monotonic() + limit
            tick = nominal
            if (
                plan is None
                or plan.schedule is None
                or tick is None
                or plan.schedule.next_after(tick - timedelta(microseconds=1)) != tick
            ):
                tick = None  # the upstream has no tick of its own at this instant
            tick_deadline = time.monotonic() + 30
            while True:
                # Tick first: once its row exists, has_unfinished sees it until it ends.
                waiting_tick = tick is not None and not await self.book(
                    store.tick_exists, upstream, tick
                )
                busy = await self.book(store.has_unfinished, upstream)
                if waiting_tick and time.monotonic() > tick_deadline:
                    waiting_tick = False
                if not busy and not waiting_tick:
                    break
                if time.monotonic() > deadline:
                    return f"upstream {upstream} still running after {limit:.0f}s"
                await self._wait_runs_changed(1.0)
        latest = await self.book(store.latest_outcomes, upstreams)
        for upstream in upstreams:
            run = latest.get(upstream)
            if run is None:
                return f"upstream {upstream} has not succeeded yet"
            if run.status != RunStatus.SUCCEEDED:
                error = f": {run.error}" if run.error else ""
                return f"upstream {upstream} {run.status} (run {run.id}){error}"
        return None

    async def _after_success(self, step: str, outcome: RunOutcome) -> None:
        """Unscheduled steps that depend on this one run now (trigger 'upstream')."""
        if outcome.status != RunStatus.SUCCEEDED or self.book is None:
            return
        for child in self.dag.downstream(step):
            plan = self.plans.get(child)
            if plan is None or plan.schedule is not None:
                continue
            run_id = await self.book(
                store.create_run,
                child,
                Trigger.UPSTREAM,
                self.agent_id,
                parent_run_id=outcome.run_id,
            )
            if reason := await self._blocked(child) or await self._upstream_gate(child, None):
                await self._skip(run_id, reason)
                continue
            await self._after_success(child, await self._run(plan, run_id, Trigger.UPSTREAM))

    async def run_chain(
        self,
        steps: list[str],
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
    ) -> list[tuple[str, int, RunStatus, str | None]]:
        """Run steps in the given (topological) order; a failure skips what depends on it."""
        assert self.book is not None
        failed: dict[str, int] = {}
        results: list[tuple[str, int, RunStatus, str | None]] = []
        for step in steps:
            plan = self.plans[step]
            run_id = await self.book(
                store.create_run,
                step,
                trigger,
                self.agent_id,
                requested_by=requested_by,
                request_id=request_id,
            )
            broken = [u for u in self._all_upstream(step) if u in failed]
            if broken:
                reason = f"upstream {broken[0]} failed (run {failed[broken[0]]})"
                await self._skip(run_id, reason)
                failed[step] = run_id
                results.append((step, run_id, RunStatus.SKIPPED, reason))
                continue
            outcome = await self._run(plan, run_id, trigger, requested_by, request_id)
            if outcome.status != RunStatus.SUCCEEDED:
                failed[step] = outcome.run_id
            results.append((step, outcome.run_id, outcome.status, outcome.error))
        return results

    def _all_upstream(self, step: str) -> set[str]:
        seen: set[str] = set()
        stack = [step]
        while stack:
            for parent in self.dag.upstream(stack.pop()):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    async def _notify_runs_changed(self) -> None:
        async with self.runs_changed:
            self.runs_changed.notify_all()

    async def _wait_runs_changed(self, seconds: float) -> None:
        async with self.runs_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.runs_changed.wait(), seconds)

    # ---------------------------------------------------------------- checks

    async def _on_check_tick(self, name: str, nominal: datetime, every: timedelta) -> None:
        assert self.book is not None
        assert self.check_engine is not None
        key = self.check_engine.fusion_key(name)
        if key is None:
            if await self.book(store.claim_check_ticks, [name], nominal, nominal + every):
                await self.run_check(name, "schedule")
            return
        # Checks that read the same rows tick at the same nominal instant (interval ticks are
        # anchored to one epoch): the first to arrive waits a moment for the others, claims
        # their ticks together (so that one agent gets them all) and runs them on one scan.
        # One that arrives late starts a batch of its own; a tick is still claimed only once.
        batch_key = (key, nominal, every)
        batch = self._check_batches.get(batch_key)
        if batch is not None:
            batch.append(name)
            return
        batch = self._check_batches[batch_key] = [name]
        try:
            await asyncio.sleep(SHARED_PROBE_WAIT)
        finally:
            del self._check_batches[batch_key]
        claimed = await self.book(store.claim_check_ticks, batch, nominal, nominal + every)
        if claimed:
            await self.run_checks([n for n in batch if n in claimed], "schedule")

    async def run_check(self, name: str, trigger: CheckTrigger) -> CheckStatus:
        """Run one check with the shared engine and record its result; returns its status."""
        return (await self.run_checks([name], trigger))[name]

    async def run_checks(self, names: list[str], trigger: CheckTrigger) -> dict[str, CheckStatus]:
        """Run checks of one instant with the shared engine and record each result under its
        own span; returns their statuses. Checks that read the same rows share one scan; the
        other probes run at the same time, on the checks' own pool (so that slow probes never
        hold up heartbeats and bookkeeping). Every probe unit is waited for; then the first
        exception, if any, is raised."""
        assert self.check_engine is not None
        if not names:
            return {}
        units = self.check_engine.probe_units(names)
        with self.tracer.start_as_current_span(_checks_title(names, units)) as outer:
            outer.set_attribute("pipectl.trigger", trigger)
            if len(units) == 1:
                done = await self._run_unit(units[0], trigger, outer)
            else:
                from pipectl.checks.engine import gather_units  # loaded with the engine already

                done = await gather_units(
                    units, functools.partial(self._run_unit_in_span, trigger=trigger)
                )
        for name in names:
            result, stored = done[name]
            self._after_check(name, result, stored)
        return {name: CheckStatus(done[name][0].status) for name in names}

    async def _run_unit_in_span(
        self, unit: list[str], trigger: CheckTrigger
    ) -> dict[str, tuple[CheckResult, store.StoredResult]]:
        with self.tracer.start_as_current_span(_checks_title(unit, [unit])) as span:
            span.set_attribute("pipectl.trigger", trigger)
            return await self._run_unit(unit, trigger, span)

    async def _run_unit(
        self, unit: list[str], trigger: CheckTrigger, span: Span
    ) -> dict[str, tuple[CheckResult, store.StoredResult]]:
        """Probe one unit (a lone check, or checks sharing a probe) on one connection and
        store its results. Retried after a lost connection: only the checks whose results
        are not stored yet run again, so no tick is recorded twice."""
        assert self.check_engine is not None
        assert self.checks_pool is not None
        lone = span if len(unit) == 1 else None
        done: dict[str, tuple[CheckResult, store.StoredResult]] = {}
        while pending := [n for n in unit if n not in done]:
            try:
                async with self.checks_pool.acquire() as conn:
                    found = await self.check_engine.run_many(
                        pending, conn, redis=self.redis, trigger=trigger
                    )
                    for name, result in found.items():
                        stored = await self._record_check(conn, result, trigger, lone)
                        done[name] = (result, stored)
            except Exception as exc:
                if not is_transient(exc) or self.stopping.is_set():
                    raise
                log.warning("checks %s: database unavailable, retrying: %s", pending, exc)
                await asyncio.sleep(2)
        return done

    async def _record_check(
        self, conn: Conn, result: CheckResult, trigger: CheckTrigger, span: Span | None
    ) -> store.StoredResult:
        """Store one result under `span` (a lone check's own span, around its probe too), or
        under a new span of its own, a child of the span of the probe it shared."""
        check = self.config.check(result.check)
        hysteresis = check.hysteresis or self.config.check_defaults.hysteresis
        with contextlib.ExitStack() as stack:
            if span is None:
                span = stack.enter_context(
                    self.tracer.start_as_current_span(f"check {result.check}")
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
                agent_id=self.agent_id,
                trigger=trigger,
                trace_id=trace_id_of(span),
            )

    def _after_check(self, name: str, result: CheckResult, stored: store.StoredResult) -> None:
        kind = self.config.check(name).kind
        self.metrics.check_finished(kind, result, stored.status, stored.silenced)
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

    # ---------------------------------------------------------------- requests

    async def _listener_loop(self) -> None:
        """LISTEN for requests (and run changes) on a dedicated connection; reconnect on loss."""
        delay = 0.5
        while not self.stopping.is_set():
            try:
                conn = await connect(
                    self.config, application_name=f"pipectl-agent {self.name} listen"[:63]
                )
            except Exception as exc:
                log.warning("listener: cannot connect (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            delay = 0.5
            lost = asyncio.Event()
            conn.add_termination_listener(functools.partial(_set_event, lost))
            await conn.add_listener(REQUEST_CHANNEL, self._on_request_notify)
            await conn.add_listener(CHANGES_CHANNEL, self._on_change_notify)
            self._listener = conn
            self.wake_requests.set()  # pick up whatever arrived while we were not listening
            try:
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        await conn.execute("SELECT 1")  # notices a dead socket promptly
            except Exception as exc:
                log.warning("listener connection lost: %s", exc)
            finally:
                self._listener = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    def _on_request_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        """The trigger sends the new request's id. Anyone who can connect may NOTIFY any
        channel, so anything else is ignored (the periodic sweep never depends on it)."""
        if isinstance(payload, str) and payload.isascii() and payload.isdigit():
            self.wake_requests.set()
        else:
            self._malformed.note(channel, payload, "expected a request id")

    def _on_change_notify(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        try:
            data = json.loads(payload) if isinstance(payload, str) else None
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("table"), str):
            self._malformed.note(channel, payload, "expected a JSON object naming a table")
            return
        if data["table"] == "runs":
            self._dispatch(self._notify_runs_changed())

    async def _request_loop(self) -> None:
        """Claim open requests when woken (NOTIFY) and on a slow sweep (missed notifications).

        At most twice `max_parallel_runs` requests are held at a time: a burst is shared
        among the agents instead of queued inside the first one that woke up."""
        from pipectl.agent.requests import RequestHandler

        handler = RequestHandler(self)
        sweep = max(1.0, self.config.agent.heartbeat.total_seconds())
        capacity = 2 * self.config.agent.max_parallel_runs
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake_requests.wait(), sweep)
            self.wake_requests.clear()
            room = capacity - len(self._executing)
            if room <= 0:
                continue
            try:
                claimed = await store.claim_requests(
                    self.pool,  # type: ignore[arg-type]
                    self.agent_id,
                    limit=room,
                    executing=list(self._executing),
                )
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("claiming requests failed")
                await asyncio.sleep(1)
                continue
            for request in claimed:
                self._executing.add(request.id)
                self._dispatch(self._execute_request(handler, request))
            if len(claimed) == room:
                self.wake_requests.set()  # more may be waiting: look again once there is room

    async def _execute_request(self, handler: RequestHandler, request: Request) -> None:
        try:
            await handler.execute(request)
        finally:
            self._executing.discard(request.id)
            self.wake_requests.set()

    # ---------------------------------------------------------------- heartbeats

    async def _heartbeat_loop(self) -> None:
        interval = self.config.agent.heartbeat.total_seconds()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self._beat()
                if self.connected_since is None:
                    self.connected_since = time.monotonic()
                    log.info("database reachable again")
                self.metrics.database_reachable(True)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("heartbeat failed")
                elif self.connected_since is not None:
                    log.warning("database unreachable: %s", exc)
                self.connected_since = None
                self.metrics.database_reachable(False)
                notify("STATUS=database unreachable, retrying")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _beat(self) -> None:
        assert self.pool is not None
        running = self.runner.in_progress if self.runner else 0
        status = f"{running} running"
        if not await store.heartbeat(self.pool, self.agent_id, status):
            await self._rejoin()
        if self._healthy_long_enough():
            for lost in await store.reap_lost_agents(
                self.pool, self.agent_id, self.config.agent.lost_after
            ):
                log.warning(
                    "agent %s lost: %d runs failed, %d requests released",
                    lost.name,
                    lost.failed_runs,
                    lost.released_requests,
                )
                self.wake_requests.set()
        counts = await self.pool.fetchrow(
            """
            SELECT (SELECT count(*) FROM pipectl.requests WHERE done_at IS NULL) AS pending,
                   (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)
                      FROM pipectl.requests WHERE done_at IS NULL) AS oldest,
                   (SELECT count(*) FROM pipectl.agents
                     WHERE stopped_at IS NULL AND lost_at IS NULL
                       AND last_seen > now() - make_interval(secs => heartbeat_seconds * 3)
                   ) AS alive
            """
        )
        assert counts is not None
        self.metrics.heartbeat_counts(counts["pending"], float(counts["oldest"]), counts["alive"])

    def _healthy_long_enough(self) -> bool:
        """After an outage every agent's heartbeat is stale; give peers the same grace to
        reconnect before declaring any of them lost."""
        if self.connected_since is None:
            return False
        grace = self.config.agent.heartbeat.total_seconds() * self.config.agent.lost_after
        return time.monotonic() - self.connected_since >= grace

    async def _rejoin(self) -> None:
        """Peers declared us lost (we were cut off): our runs and requests were handed over,
        so stop what we were doing and come back as a new agent."""
        log.warning("this agent was declared lost by a peer; abandoning in-flight work")
        if self.runner is not None:
            self.runner.cancel_reason = "abandoned: agent was declared lost by a peer"
        for task in list(self._work):
            task.cancel()
        self.agent_id = uuid.uuid4()
        if self.runner is not None:
            self.runner.agent_id = self.agent_id
        await self._register()

    async def _register(self) -> None:
        """Record this agent (under its current id) in pipectl.agents."""
        assert self.pool is not None
        await store.register_agent(
            self.pool,
            agent_id=self.agent_id,
            name=self.name,
            host=self.host,
            pid=os.getpid(),
            version=__version__,
            heartbeat_seconds=self.config.agent.heartbeat.total_seconds(),
        )

    async def _reap_dead_predecessors(self) -> None:
        """A crashed or killed agent on this host is lost now, not three heartbeats later."""
        assert self.pool is not None
        rows = await self.pool.fetch(
            "SELECT id, pid FROM pipectl.agents WHERE host = $1 AND stopped_at IS NULL"
            " AND lost_at IS NULL AND id <> $2",
            self.host,
            self.agent_id,
        )
        dead = [
            r["id"] for r in rows if r["pid"] != os.getpid() and not psutil.pid_exists(r["pid"])
        ]
        if not dead:
            return
        for lost in await store.reap_dead_predecessors(self.pool, self.agent_id, dead):
            log.warning(
                "previous agent %s on this host is gone: %d runs marked failed",
                lost.name,
                lost.failed_runs,
            )

    # ---------------------------------------------------------------- scorecard

    async def _scorecard_loop(self) -> None:
        """Export the quality scorecard (completeness, accuracy, consistency, timeliness per
        table) from the results the checks stored, whenever a quality or freshness check
        recorded one; nothing is probed here. At most every 10 s."""
        from pipectl.checks import scorecard

        while not self.stopping.is_set():
            await self.scorecard_due.wait()
            self.scorecard_due.clear()
            try:
                assert self.pool is not None
                async with self.pool.acquire() as conn:
                    rows = await scorecard.compute(conn, self.config)
                for row in rows:
                    for dimension in scorecard.DIMENSIONS:
                        ratio = row.ratio(dimension)
                        if ratio is not None:
                            self.metrics.quality(row.table, dimension, ratio)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("scorecard export failed")
            await asyncio.sleep(10)

    # ---------------------------------------------------------------- retention

    async def _retention_loop(self) -> None:
        r = self.config.retention
        ages = {
            "runs": r.runs,
            "results": r.results,
            "samples": r.samples,
            "events": r.events,
            "requests": r.requests,
            "agents": r.runs,
        }
        while not self.stopping.is_set():
            try:
                deleted = await store.prune(self.pool, ages)  # type: ignore[arg-type]
                if any(deleted.values()):
                    log.info("retention: deleted %s", deleted)
            except Exception as exc:
                log.warning("retention pass failed: %s", exc)
            await asyncio.sleep(3600)

    # ---------------------------------------------------------------- one-shot

    async def run_once(self) -> int:
        """Every step (dependency order) and every check once; exit code by the worst."""
        results = await self.run_chain(
            self.dag.order(), Trigger.MANUAL, requested_by="agent --once"
        )
        worst = 0
        for step, run_id, status, error in results:
            log.info(
                "once: step %s run %d %s%s", step, run_id, status, f": {error}" if error else ""
            )
            if status in (RunStatus.FAILED, RunStatus.CANCELLED):
                worst = 2
            elif status == RunStatus.SKIPPED:
                worst = max(worst, 1)
        if self.check_engine is not None:
            checked = await self.run_checks(self._enabled_checks(), "manual")
            worst = max([worst, *(status.exit_code for status in checked.values())])
        return worst

    # ---------------------------------------------------------------- reload

    async def reload(self, loaded: LoadedConfig) -> None:
        """Apply a new config; on any problem keep the old one and say why."""
        assert self.pool is not None
        plans = build_plans(loaded.config)
        dag = Dag([p.config for p in plans.values()])
        old = (self.loaded, self.config, self.plans, self.dag, self.check_engine)
        self.loaded, self.config, self.plans, self.dag = loaded, loaded.config, plans, dag
        try:
            async with self.pool.acquire() as conn:
                await validate_steps(conn, loaded)
                self.check_engine = None
                await self._prepare_checks(conn)
        except Exception:
            self.loaded, self.config, self.plans, self.dag, self.check_engine = old
            raise
        for name in [n for n in self._loops if n.startswith(("step:", "check:"))]:
            self._loops.pop(name).cancel()
        await self._publish()
        self._start_schedules()
        log.info(
            "configuration reloaded: %d steps, %d checks", len(plans), len(self._enabled_checks())
        )


def _checks_title(names: Sequence[str], units: Sequence[Sequence[str]]) -> str:
    """A span name: one check, checks sharing one probe, or several probe units."""
    if len(names) == 1:
        return f"check {names[0]}"
    if len(units) == 1:
        return f"checks: {len(names)} sharing a probe"
    return f"checks: {len(names)} in {len(units)} probes"


class _Throttled:
    """A warning that input from outside can repeat at will: logged at most once a minute
    per channel, with the number of repeats it stood for. The payload is never quoted."""

    def __init__(self, message: str, every: float = 60.0) -> None:
        self.message = message
        self.every = every
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def note(self, channel: str, payload: object, what: str) -> None:
        now = time.monotonic()
        if now - self.last.get(channel, -self.every) < self.every:
            self.suppressed[channel] = self.suppressed.get(channel, 0) + 1
            return
        size = len(payload.encode(errors="replace")) if isinstance(payload, str) else 0
        repeats = self.suppressed.pop(channel, 0)
        extra = f" (and {repeats} more since the last report)" if repeats else ""
        log.warning(self.message + extra, channel, size, what, extra={"channel": channel})
        self.last[channel] = now


def _set_event(event: asyncio.Event, *_: object) -> None:
    event.set()


def _interval(plan: StepPlan) -> float | None:
    """Seconds between two consecutive ticks (for cron: the next two)."""
    if plan.schedule is None:
        return None
    first = plan.schedule.next_after(datetime.now(UTC))
    return (plan.schedule.next_after(first) - first).total_seconds()
