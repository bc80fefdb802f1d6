"""Executes one step run: its own connection, timeouts, a cross-agent lock, retries.

Each attempt is one transaction on a connection of its own:
  SET LOCAL statement_timeout / lock_timeout / application_name / TimeZone
  pg_try_advisory_xact_lock(step)   -- held elsewhere? the run is recorded as skipped
  [the previous content, measured for the step's gates]
  REFRESH MATERIALIZED VIEW [CONCURRENTLY] ... | the step's SQL
  [the step's gates on the new content: one fails -> ROLLBACK, the run is recorded as held]
Transient failures (lost connection, lock timeout, serialization, deadlock) are retried with
exponential backoff and jitter, each attempt a run row of its own; SQL errors never are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pipectl import store
from pipectl.agent import gates
from pipectl.agent.bookkeeping import Bookkeeper, RunEnd, RunLedger
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.schedule import Schedule
from pipectl.agent.tracing import trace_id_of
from pipectl.clock import SYSTEM_CLOCK, Clock
from pipectl.config import StepConfig
from pipectl.durations import format_duration
from pipectl.identifiers import Relation
from pipectl.incremental import defining_query
from pipectl.model import RunStatus, Trigger
from pipectl.resilience import (
    backoff_delay,
    describe,
    describe_error,
    is_connection_loss,
    is_transient,
)
from pipectl.store import incremental as incremental_store
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from pipectl.checks.engine import CheckEngine

log = logging.getLogger(__name__)

# First key of every pipectl advisory lock (two-int form); the second is hashtext(name).
LOCK_NAMESPACE = 0x70697065
# How long a run other than a scheduled tick waits for its step's lock (see _step_lock).
MANUAL_LOCK_WAIT = 2.5
# How long past its statement_timeout the agent waits for a step's statement before giving up
# on the connection (a server that went silent cannot even cancel it).
CLIENT_GRACE = 10.0


@dataclass(frozen=True)
class StepPlan:
    """A step with its effective settings (step overrides applied over [defaults])."""

    config: StepConfig
    statement_timeout: timedelta
    lock_timeout: timedelta
    retries: int
    retry_backoff: timedelta
    retry_backoff_max: timedelta
    schedule: Schedule | None
    timezone: str = "UTC"
    """The session time zone refreshes run in: views comparing naive timestamps with now()
    must not depend on the server's or the role's default."""

    @property
    def name(self) -> str:
        return self.config.name

    def statement_text(self, concurrently: bool = True) -> str:
        """The SQL the step runs, as shown to operators."""
        step = self.config
        if step.kind == "matview":
            assert step.relation is not None
            prefix = (
                "REFRESH MATERIALIZED VIEW CONCURRENTLY"
                if concurrently
                else ("REFRESH MATERIALIZED VIEW")
            )
            return f"{prefix} {step.relation.sql}"
        if step.kind == "sql":
            assert step.sql is not None
            return step.sql.strip()
        if step.kind == "incremental":
            assert step.incremental is not None
            return (
                f"-- incremental: buckets of {step.incremental.source} since the watermark, "
                f"published into {step.relation} as a difference; the summary stands for:\n"
                + defining_query(step, reference="now()")
            )
        return "-- view: nothing to refresh (checks only)"


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: RunStatus
    error: str | None = None
    rows: int | None = None
    attempts: int = 1
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Attempt:
    status: RunStatus
    error: str | None = None
    rows: int | None = None
    transient: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


class _Held(Exception):
    """A gate failed: raised inside the run's transaction to roll it back."""

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__(attempt.error)
        self.attempt = attempt


@dataclass(frozen=True)
class GateMode:
    """How a run treats its step's gates: `checks` evaluates configured check gates;
    `enforce` False publishes whatever they say (publish anyway), recording their values."""

    checks: CheckEngine | None = None
    enforce: bool = True


class StepRunner:
    def __init__(
        self,
        *,
        runs_pool: asyncpg.Pool,
        book: Bookkeeper,
        ledger: RunLedger,
        agent_id: UUID,
        agent_name: str,
        metrics: AgentMetrics,
        max_parallel: int,
        tracer: trace.Tracer,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.runs_pool = runs_pool
        self.book = book
        self.ledger = ledger
        self.clock = clock
        self.agent_id = agent_id
        self.agent_name = agent_name
        self.metrics = metrics
        self.tracer = tracer
        self.slots = asyncio.Semaphore(max_parallel)
        self.in_progress = 0
        self.cancel_reason = "cancelled: agent shutting down"

    async def run(
        self,
        plan: StepPlan,
        run_id: int,
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
        attempt: int = 1,
        gate_mode: GateMode | None = None,
    ) -> RunOutcome:
        """Run (and retry) until success, a final failure, a skip or cancellation.
        `attempt` is the run's attempt number (above 1 for a run taken over after its agent
        was lost): retries stop after plan.retries in all. One span for the run (a child of
        the request's span when a request asked for it), one child span per attempt."""
        with self.tracer.start_as_current_span(f"step {plan.name}") as span:
            span.set_attributes(
                {
                    "pipectl.step": plan.name,
                    "pipectl.step.kind": plan.config.kind,
                    "pipectl.run_id": run_id,
                    "pipectl.trigger": str(trigger),
                    "pipectl.agent": self.agent_name,
                }
            )
            if request_id is not None:
                span.set_attribute("pipectl.request.id", request_id)
            try:
                outcome = await self._run(
                    plan,
                    run_id,
                    trigger,
                    requested_by,
                    request_id,
                    attempt,
                    gate_mode or GateMode(),
                )
            except asyncio.CancelledError:
                span.set_attribute("pipectl.outcome", str(RunStatus.CANCELLED))
                raise
            span.set_attributes(
                {
                    "pipectl.outcome": str(outcome.status),
                    "pipectl.attempts": outcome.attempts,
                    "pipectl.final_run_id": outcome.run_id,
                }
            )
            if outcome.rows is not None:
                span.set_attribute("pipectl.rows", outcome.rows)
            if outcome.status == RunStatus.FAILED:
                span.set_status(Status(StatusCode.ERROR, outcome.error or "failed"))
            return outcome

    async def _run(
        self,
        plan: StepPlan,
        run_id: int,
        trigger: Trigger,
        requested_by: str | None,
        request_id: int | None,
        attempt: int,
        gate_mode: GateMode,
    ) -> RunOutcome:
        while True:
            async with self.slots:
                result = await self._attempt(plan, run_id, trigger, attempt, gate_mode)
            if result.status != RunStatus.FAILED or not result.transient or attempt > plan.retries:
                return RunOutcome(
                    run_id, result.status, result.error, result.rows, attempt, result.detail
                )
            delay = backoff_delay(
                plan.retry_backoff.total_seconds(), plan.retry_backoff_max.total_seconds(), attempt
            )
            next_id = await self.book(
                store.create_run,
                plan.name,
                Trigger.RETRY,
                self.agent_id,
                requested_by=requested_by,
                request_id=request_id,
                parent_run_id=run_id,
                attempt=attempt + 1,
            )
            log.info(
                "step %s: transient failure, retry %d/%d in %.1fs as run %d",
                plan.name,
                attempt,
                plan.retries,
                delay,
                next_id,
                extra={"step": plan.name, "run_id": run_id},
            )
            await self.clock.sleep(delay)
            run_id, attempt = next_id, attempt + 1

    async def _attempt(
        self, plan: StepPlan, run_id: int, trigger: Trigger, attempt: int, gate_mode: GateMode
    ) -> _Attempt:
        with self.tracer.start_as_current_span(f"step {plan.name} attempt {attempt}") as span:
            span.set_attributes(
                {
                    "pipectl.step": plan.name,
                    "pipectl.run_id": run_id,
                    "pipectl.trigger": str(trigger if attempt == 1 else Trigger.RETRY),
                    "pipectl.attempt": attempt,
                }
            )
            started = self.clock.monotonic()
            try:
                await self.book(store.start_run, run_id, trace_id_of(span))
            except Exception as exc:
                # Nothing ran; the run must not stay queued for anyone waiting on the step.
                result = _Attempt(
                    RunStatus.FAILED, f"could not record the run's start: {describe(exc)}"
                )
                await self._record(plan, run_id, result, started)
                span.set_status(Status(StatusCode.ERROR, result.error or "failed"))
                return result
            self.in_progress += 1
            self.metrics.runs_in_progress(self.in_progress)
            try:
                result = await self._execute(plan, run_id, trigger, gate_mode)
            except asyncio.CancelledError:
                result = _Attempt(RunStatus.CANCELLED, self.cancel_reason)
                await asyncio.shield(self._record(plan, run_id, result, started))
                span.set_attribute("pipectl.outcome", str(result.status))
                raise
            except Exception as exc:  # classified and recorded, never lost
                result = _classify(exc, plan)
            finally:
                self.in_progress -= 1
                self.metrics.runs_in_progress(self.in_progress)
            if result.transient and attempt <= plan.retries:
                result = _Attempt(
                    result.status,
                    f"{result.error} (transient, will retry)",
                    result.rows,
                    True,
                    result.detail,
                )
            await self._record(plan, run_id, result, started)
            span.set_attribute("pipectl.outcome", str(result.status))
            if result.rows is not None:
                span.set_attribute("pipectl.rows", result.rows)
            if result.status == RunStatus.FAILED:
                span.set_status(Status(StatusCode.ERROR, result.error or "failed"))
            return result

    async def _record(self, plan: StepPlan, run_id: int, result: _Attempt, started: float) -> None:
        duration = self.clock.monotonic() - started
        end = RunEnd(
            result.status,
            result.rows,
            result.error,
            {**result.detail, "duration_s": round(duration, 4)},
        )
        still_ours = await self.ledger.finish(run_id, end)
        if not still_ours and not self.ledger.holds(run_id):
            log.warning(
                "run %d of %s was already closed by another agent (declared lost?)",
                run_id,
                plan.name,
                extra={"step": plan.name, "run_id": run_id},
            )
        self.metrics.run_finished(plan.name, result.status, duration)
        if result.status == RunStatus.SUCCEEDED and "rows_read" in result.detail:
            self.metrics.incremental_refreshed(
                plan.name, result.detail["rows_read"], result.detail["rows_arrived"]
            )
        if result.status == RunStatus.HELD:
            await self._held_event(plan, run_id, result)
        level = (
            logging.WARNING if result.status in (RunStatus.FAILED, RunStatus.HELD) else logging.INFO
        )
        log.log(
            level,
            "step %s %s in %.3fs%s",
            plan.name,
            result.status,
            duration,
            f": {result.error}" if result.error else "",
            extra={"step": plan.name, "run_id": run_id, "status": str(result.status)},
        )

    async def _held_event(self, plan: StepPlan, run_id: int, result: _Attempt) -> None:
        """The audit trail's (and the incident timeline's) note of a hold: best effort, the
        run row already says it all."""
        try:
            await self.book(
                store.add_event,
                "step.held",
                plan.name,
                f"{plan.name} run {run_id} {result.error}",
                {"run_id": run_id, "gates": result.detail.get("gates", [])},
            )
        except Exception as exc:
            log.warning(
                "step %s: could not record its hold as an event: %s", plan.name, describe(exc)
            )

    async def _execute(
        self, plan: StepPlan, run_id: int, trigger: Trigger, gate_mode: GateMode
    ) -> _Attempt:
        try:
            return await self._transaction(plan, trigger, gate_mode)
        except _Held as held:  # rolled back: the previous content stays
            return held.attempt

    async def _transaction(self, plan: StepPlan, trigger: Trigger, gate_mode: GateMode) -> _Attempt:
        async with self.runs_pool.acquire() as conn, conn.transaction():
            # client_connection_check_interval (PostgreSQL 14+): a killed agent's refresh
            # would otherwise go on to its end on the server, holding the step's lock
            # against the peer taking over; the server checks every second that the client
            # is still there and aborts the statement if not.
            await conn.execute(
                "SELECT set_config('statement_timeout', $1, true),"
                " set_config('lock_timeout', $2, true),"
                " set_config('application_name', $3, true),"
                " set_config('TimeZone', $4, true),"
                " CASE WHEN current_setting('server_version_num')::int >= 140000"
                " THEN set_config('client_connection_check_interval', '1s', true) END",
                f"{int(plan.statement_timeout.total_seconds() * 1000)}ms",
                f"{int(plan.lock_timeout.total_seconds() * 1000)}ms",
                f"pipectl-agent {self.agent_name}: {plan.name}"[:63],
                plan.timezone,
                timeout=CLIENT_GRACE,
            )
            if not await _step_lock(conn, plan.name, trigger, self.clock):
                holder = await lock_holder(conn, plan.name)
                return _Attempt(
                    RunStatus.SKIPPED,
                    f"already running elsewhere{f' ({holder})' if holder else ''}",
                    detail={"holder": holder},
                )
            await store.measure_own_reads(conn)
            before = await store.pending_reads(conn)
            gated = gates.has_gates(plan.config)
            gate_seconds = 0.0
            previous: gates.Before | None = None
            if gated:
                began = time.perf_counter()
                previous = await gates.measure_before(
                    conn, plan.config, within=_client_deadline(plan)
                )
                gate_seconds += time.perf_counter() - began
            result = await _perform(conn, plan)
            if gated and result.status == RunStatus.SUCCEEDED:
                began = time.perf_counter()
                verdicts = await gates.evaluate(
                    conn,
                    plan.config,
                    previous,
                    within=_client_deadline(plan),
                    checks=gate_mode.checks,
                )
                gate_seconds += time.perf_counter() - began
                result = _gated(result, verdicts, gate_seconds, gate_mode.enforce)
                if result.status == RunStatus.HELD:
                    raise _Held(result)
            reads = store.reads_between(before, await store.pending_reads(conn))
            await _record_reads(conn, plan.name, reads)
            return result


def _gated(
    result: _Attempt, verdicts: list[gates.GateResult], seconds: float, enforce: bool
) -> _Attempt:
    """The run's result once its gates have spoken: held when one failed and they are
    enforced; otherwise as it was, with the gates' values (and an override noted)."""
    held = gates.held_message(verdicts)
    detail = {
        **result.detail,
        "gates": [v.to_json() for v in verdicts],
        "gates_s": round(seconds, 4),
    }
    if held is not None and enforce:
        return _Attempt(RunStatus.HELD, held, result.rows, detail=detail)
    if held is not None:
        detail["gates_overridden"] = held
    return replace(result, detail=detail)


async def _record_reads(conn: Conn, step: str, reads: store.Reads) -> None:
    """What the run looked up, for the buffer-cache check to leave out: written in the run's
    transaction (still under the step's lock), behind a savepoint, so that a refused insert
    costs only that correction, never the run."""
    try:
        async with conn.transaction():
            await store.record_own_reads(conn, f"step {step}", reads)
    except asyncpg.PostgresError as exc:
        log.warning("step %s: could not record its own reads: %s", step, describe(exc))


async def _step_lock(conn: Conn, step: str, trigger: Trigger, clock: Clock) -> bool:
    """The step's cross-agent lock. A scheduled tick that finds it taken is skipped at once
    (someone is refreshing); any other run waits MANUAL_LOCK_WAIT for it first, so that the
    statement of an agent killed a moment ago (which the server aborts within its
    client_connection_check_interval) does not turn an operator's rerun into a skip."""
    deadline = clock.monotonic() + (0 if trigger == Trigger.SCHEDULE else MANUAL_LOCK_WAIT)
    while True:
        if await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
            LOCK_NAMESPACE,
            step,
            timeout=CLIENT_GRACE,
        ):
            return True
        if clock.monotonic() >= deadline:
            return False
        await clock.sleep(0.25)


async def _perform(conn: Conn, plan: StepPlan) -> _Attempt:
    step = plan.config
    if step.kind == "matview":
        assert step.relation is not None
        return await _refresh(conn, step.relation, plan)
    if step.kind == "sql":
        assert step.sql is not None
        status = await conn.execute(step.sql, timeout=_client_deadline(plan))
        return _Attempt(RunStatus.SUCCEEDED, rows=_rows_from_tag(status), detail={"tag": status})
    if step.kind == "incremental":
        return await _incremental(conn, plan)
    assert step.relation is not None
    await conn.execute(f"SELECT 1 FROM {step.relation.sql} LIMIT 0")
    return _Attempt(RunStatus.SUCCEEDED, detail={"note": "view: nothing to refresh"})


async def _refresh(conn: Conn, relation: Relation, plan: StepPlan) -> _Attempt:
    shape = await conn.fetchrow(
        """
        SELECT c.relkind, c.relispopulated,
               EXISTS (SELECT 1 FROM pg_index i
                       WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                         AND i.indpred IS NULL AND i.indexprs IS NULL) AS has_unique
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = $2
        """,
        relation.schema,
        relation.name,
    )
    if shape is None:
        return _Attempt(RunStatus.FAILED, f"materialized view {relation} does not exist")
    if shape["relkind"] != b"m":
        return _Attempt(RunStatus.FAILED, f"{relation} is not a materialized view")
    concurrently = bool(shape["relispopulated"] and shape["has_unique"])
    if not concurrently:
        reason = "not populated yet" if not shape["relispopulated"] else "has no unique index"
        log.warning(
            "step %s: %s %s, so it is refreshed without CONCURRENTLY: readers are blocked "
            "until it finishes",
            plan.name,
            relation,
            reason,
            extra={"step": plan.name},
        )
    await store.refresh_summary(conn, relation, concurrently, within=_client_deadline(plan))
    rows = await conn.fetchval(
        f"SELECT count(*) FROM {relation.sql}", timeout=_client_deadline(plan)
    )
    return _Attempt(RunStatus.SUCCEEDED, rows=rows, detail={"concurrently": concurrently})


async def _incremental(conn: Conn, plan: StepPlan) -> _Attempt:
    """An incremental step's refresh (pipectl.store.incremental), in the run's transaction."""
    try:
        done = await incremental_store.refresh(conn, plan.config, within=_client_deadline(plan))
    except incremental_store.IncrementalError as exc:
        return _Attempt(RunStatus.FAILED, str(exc))
    for warning in done.warnings:
        log.warning("step %s: %s", plan.name, warning, extra={"step": plan.name})
    log.info(
        "step %s: read %d rows for %d arrived, %d buckets recomputed, %d invalidations, "
        "groups -%d +%d",
        plan.name,
        done.rows_read,
        done.rows_arrived,
        done.buckets,
        done.invalidations,
        done.deleted,
        done.inserted,
        extra={"step": plan.name},
    )
    return _Attempt(RunStatus.SUCCEEDED, rows=done.rows, detail=done.detail())


async def lock_holder(conn: Conn, step: str) -> str | None:
    """Who holds a step's advisory lock, as far as pg_stat_activity lets us see."""
    row = await conn.fetchrow(
        """
        SELECT a.pid, a.application_name, a.usename, host(a.client_addr) AS client
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          -- advisory locks are per database: a session of another database holding the
          -- same numbers is someone else's business (and not ours to name)
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = $1::bigint::oid
          AND l.objid = (hashtext($2)::bigint & 4294967295)::oid
        LIMIT 1
        """,
        LOCK_NAMESPACE,
        step,
    )
    if row is None:
        return None
    who = row["application_name"] or row["usename"] or "unknown session"
    where = f" from {row['client']}" if row["client"] else ""
    return f"{who}, backend pid {row['pid']}{where}"


def _rows_from_tag(tag: str) -> int | None:
    """'INSERT 0 5' -> 5, 'DELETE 3' -> 3, 'SELECT 1' -> None (a function call's result)."""
    parts = tag.split()
    if (
        parts
        and parts[0] in ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY")
        and parts[-1].isdigit()
    ):
        return int(parts[-1])
    return None


def _classify(exc: Exception, plan: StepPlan) -> _Attempt:
    transient = is_transient(exc)
    if isinstance(exc, asyncpg.QueryCanceledError):
        message = (
            f"cancelled by statement_timeout ({format_duration(plan.statement_timeout)})"
            if "statement timeout" in str(exc)
            else f"cancelled: {exc}"
        )
    elif isinstance(exc, asyncpg.LockNotAvailableError):
        message = f"lock not available within lock_timeout ({format_duration(plan.lock_timeout)})"
    elif is_connection_loss(exc) and not isinstance(exc, TimeoutError):
        message = f"connection lost: {str(exc) or type(exc).__name__}"
    elif isinstance(exc, TimeoutError):
        message = (
            "no answer from the database within statement_timeout + "
            f"{CLIENT_GRACE:.0f}s: connection given up"
        )
    elif isinstance(exc, asyncpg.PostgresError):
        message = describe_error(exc)
    elif transient:
        message = f"connection lost: {str(exc) or type(exc).__name__}"
    else:
        log.exception("step %s: unexpected error", plan.name, extra={"step": plan.name})
        message = f"unexpected error: {type(exc).__name__}: {exc}"
    return _Attempt(RunStatus.FAILED, message, transient=transient)


def _client_deadline(plan: StepPlan) -> float:
    """Seconds the client waits for a step's statement: the server cancels it at
    statement_timeout; past that (plus a grace) the server is not answering at all."""
    return plan.statement_timeout.total_seconds() + CLIENT_GRACE
