"""Operator requests from pipectl.requests: claimed by one agent, executed exactly once.

`RequestQueue` claims open requests when woken (NOTIFY) and on a slow sweep (notifications
missed while not listening), at most twice `max_parallel_runs` at a time so that a burst is
shared among the agents. `RequestHandler` carries one out and records its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from opentelemetry.trace import SpanKind, Status, StatusCode

from pipectl import store
from pipectl.agent.checking import CheckScheduler
from pipectl.agent.runtime import AgentRuntime
from pipectl.agent.steps import StepScheduler
from pipectl.model import Outcome, Request, RequestKind, RunStatus, Trigger
from pipectl.request_args import (
    ARGS_OF,
    ArgsError,
    PublishArgs,
    RequestArgs,
    RerunArgs,
    SilenceArgs,
)
from pipectl.resilience import Outage, describe_error, is_transient
from pipectl.telemetry import context_from

log = logging.getLogger(__name__)

A = TypeVar("A", bound=RequestArgs)


class Rejected(Exception):
    """The request cannot be carried out as asked (unknown target, bad arguments)."""


class RequestQueue:
    def __init__(self, rt: AgentRuntime, handler: RequestHandler) -> None:
        self.rt = rt
        self.handler = handler
        self.executing: set[int] = set()
        self.outage = Outage("claiming requests", log, clock=rt.clock)
        self._parked = False

    @property
    def parked(self) -> bool:
        """Waiting for a wake-up or the next sweep, with none pending: nothing filed from now
        on is claimed before one of them (tests use this to know a sweep has finished)."""
        return self._parked and not self.rt.wake_requests.is_set()

    def wake(self) -> None:
        self.rt.wake_requests.set()

    async def loop(self) -> None:
        rt = self.rt
        wake = rt.wake_requests
        while not rt.stopping.is_set():
            sweep = max(1.0, rt.config.agent.heartbeat.total_seconds())
            self._parked = True
            try:
                await rt.clock.wait(wake, sweep)
            finally:
                self._parked = False
            wake.clear()
            room = 2 * rt.config.agent.max_parallel_runs - len(self.executing)
            if room <= 0:
                continue
            began = time.time_ns()
            try:
                claimed = await store.claim_requests(
                    rt.pool, rt.identity.id, limit=room, executing=list(self.executing)
                )
            except Exception as exc:
                self.outage.failed(exc)
                await rt.clock.sleep(1)
                continue
            self.outage.recovered()
            claim = (began, time.time_ns())
            for request in claimed:
                self.executing.add(request.id)
                rt.work.dispatch(self._execute(request, claim))
            if len(claimed) == room:
                wake.set()  # more may be waiting: look again once there is room

    async def _execute(self, request: Request, claim: tuple[int, int] | None = None) -> None:
        try:
            await self.handler.execute(request, claim)
        finally:
            self.executing.discard(request.id)
            self.rt.wake_requests.set()


class RequestHandler:
    def __init__(self, rt: AgentRuntime, steps: StepScheduler, checks: CheckScheduler) -> None:
        self.rt = rt
        self.steps = steps
        self.checks = checks

    async def execute(self, request: Request, claim: tuple[int, int] | None = None) -> None:
        """Carry out one claimed request and record its outcome; never raises for bad input.

        One span for the request, continuing the trace of whoever filed it (its stored
        traceparent): the claim (`claim`: when the claiming statement began and ended, in
        ns), the runs or checks it makes, and the outcome are all in that trace."""
        tracer = self.rt.tracer
        with tracer.start_as_current_span(
            f"request {request.kind}",
            context=context_from(request.traceparent),
            kind=SpanKind.CONSUMER,
            start_time=claim[0] if claim else None,
            attributes={
                "pipectl.request.id": request.id,
                "pipectl.request.kind": str(request.kind),
                "pipectl.request.target": request.target,
                "pipectl.request.requested_by": request.requested_by,
                "pipectl.agent": self.rt.identity.name,
            },
        ) as span:
            if claim is not None:
                tracer.start_span(
                    "claim request",
                    start_time=claim[0],
                    attributes={"pipectl.request.id": request.id},
                ).end(end_time=claim[1])
            outcome = await self._execute(request)
            span.set_attribute("pipectl.outcome", str(outcome))
            if outcome == Outcome.FAILED:
                span.set_status(Status(StatusCode.ERROR, "request failed"))

    async def _execute(self, request: Request) -> Outcome:
        log.info(
            "request %d: %s %s by %s",
            request.id,
            request.kind,
            request.target,
            request.requested_by,
            extra={"request_id": request.id},
        )
        try:
            outcome, detail = await self._dispatch(request)
        except Rejected as exc:
            outcome, detail = Outcome.REJECTED, str(exc)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancelled(request))
            raise
        except asyncpg.PostgresError as exc:
            log.warning("request %d failed: %s", request.id, describe_error(exc))
            outcome, detail = Outcome.FAILED, describe_error(exc)
        except Exception as exc:
            if is_transient(exc):
                log.warning("request %d failed: %s", request.id, exc)
            else:
                log.exception("request %d failed unexpectedly", request.id)
            outcome, detail = Outcome.FAILED, f"{type(exc).__name__}: {exc}"
        recorded = await self.rt.book(
            store.finish_request, request.id, outcome, detail, claimed_by=request.claimed_by
        )
        if not recorded:
            log.warning("request %d was already finished or handed to another agent", request.id)
        self.rt.metrics.request_finished(str(request.kind), str(outcome))
        log.info("request %d %s: %s", request.id, outcome, detail, extra={"request_id": request.id})
        return outcome

    async def _cancelled(self, request: Request) -> None:
        """Stopped mid-way (shutdown, or declared lost). A request that changed nothing that
        cannot be done again goes back to the queue for the next agent; a rerun that made
        runs is recorded as cancelled (its runs are recorded as cancelled too). Claims that
        moved to another agent in the meantime are left alone."""
        book = self.rt.book
        assert request.claimed_by is not None
        makes_runs = (RequestKind.RERUN, RequestKind.PUBLISH)
        if request.kind not in makes_runs or not await book(store.request_has_runs, request.id):
            if await book(store.release_request, request.id, request.claimed_by):
                log.info("request %d handed back: not started", request.id)
            return
        await book(
            store.finish_request,
            request.id,
            Outcome.CANCELLED,
            "agent stopped while executing the request",
            claimed_by=request.claimed_by,
        )

    async def _dispatch(self, request: Request) -> tuple[Outcome, str]:
        _args(ARGS_OF[request.kind], request)  # malformed arguments of any kind: rejected
        if request.kind == RequestKind.RERUN:
            return await self._rerun(request)
        if request.kind == RequestKind.PUBLISH:
            return await self._publish(request)
        if request.kind == RequestKind.CHECK:
            return await self._check(request)
        if request.kind in (RequestKind.PAUSE, RequestKind.RESUME):
            return await self._pause(request)
        return await self._silence(request)

    def _step(self, request: Request) -> str:
        steps = self.rt.plan.steps
        if request.target not in steps:
            known = ", ".join(sorted(steps)) or "none"
            raise Rejected(f"unknown step {request.target!r} (steps: {known})")
        return request.target

    async def _rerun(self, request: Request) -> tuple[Outcome, str]:
        step = self._step(request)
        steps = self.rt.plan.dag.rerun(step, _args(RerunArgs, request).downstream)
        results = await self.steps.run_chain(
            steps, Trigger.MANUAL, requested_by=request.requested_by, request_id=request.id
        )
        summary = "; ".join(
            f"{name} {status} (run {run_id})"
            + (f": {error}" if error and status != RunStatus.SUCCEEDED else "")
            for name, run_id, status, error in results
        )
        ok = all(status == RunStatus.SUCCEEDED for _, _, status, _ in results)
        return (Outcome.SUCCEEDED if ok else Outcome.FAILED), summary

    async def _publish(self, request: Request) -> tuple[Outcome, str]:
        """Publish anyway: only the held run the operator named, only while it is still the
        step's latest decisive run (a rerun or a later hold in between changes what would be
        published, so the request is rejected and the operator looks again)."""
        step = self._step(request)
        held_run = _args(PublishArgs, request).run
        latest = (await self.rt.book(store.latest_outcomes, [step])).get(step)
        if latest is None or latest.id != held_run or latest.status != RunStatus.HELD:
            now = f"run {latest.id} {latest.status}" if latest else "no decisive run"
            raise Rejected(
                f"run {held_run} is not the held run of {step} any more (latest: {now});"
                " nothing published"
            )
        book = self.rt.book
        await book(
            store.add_event,
            "step.publish",
            step,
            f"{step}: held run {held_run} published anyway by {request.requested_by}"
            + (f": {request.reason}" if request.reason else ""),
            {"request_id": request.id, "held_run": held_run, "held": latest.error},
            request.requested_by,
        )
        outcome = await self.steps.publish(step, held_run, request.requested_by, request.id)
        text = f"{step} {outcome.status} (run {outcome.run_id})"
        if outcome.status != RunStatus.SUCCEEDED:
            return Outcome.FAILED, f"{text}: {outcome.error}" if outcome.error else text
        overridden = outcome.detail.get("gates_overridden")
        return Outcome.SUCCEEDED, f"{text}, gates overridden: {overridden}" if overridden else (
            f"{text}; its gates passed this time"
        )

    async def _check(self, request: Request) -> tuple[Outcome, str]:
        plan = self.rt.plan
        if plan.checks is None:
            raise Rejected("this agent runs no checks")
        enabled = plan.enabled_checks()
        if request.target in ("*", "all"):
            names = enabled
        elif request.target in enabled:
            names = [request.target]
        else:
            raise Rejected(f"unknown check {request.target!r}")
        # All at once: checks that read the same rows share one scan, as on schedule.
        statuses = Counter(
            str(s) for s in (await self.checks.run_checks(names, "manual", plan)).values()
        )
        return Outcome.SUCCEEDED, f"{len(names)} checks ran: " + ", ".join(
            f"{count} {status}" for status, count in sorted(statuses.items())
        )

    async def _pause(self, request: Request) -> tuple[Outcome, str]:
        step = self._step(request)
        pause = request.kind == RequestKind.PAUSE
        book = self.rt.book
        await book(store.set_paused, step, pause, request.requested_by, request.reason)
        verb = "paused" if pause else "resumed"
        await book(
            store.add_event,
            f"step.{verb}",
            step,
            f"{step} {verb} by {request.requested_by}"
            + (f": {request.reason}" if request.reason else ""),
            {"request_id": request.id},
            request.requested_by,
        )
        return Outcome.SUCCEEDED, f"{step} {verb}"

    async def _silence(self, request: Request) -> tuple[Outcome, str]:
        names = {c.name for c in self.rt.config.checks}
        if request.target not in names:
            raise Rejected(f"unknown check {request.target!r}")
        book = self.rt.book
        until: datetime | None = None
        if request.kind == RequestKind.SILENCE:
            until = _silence_until(request)
        await book(store.set_silence, request.target, until, request.requested_by, request.reason)
        what = f"silenced until {until.isoformat(timespec='minutes')}" if until else "unsilenced"
        await book(
            store.add_event,
            "check.silence",
            request.target,
            f"{request.target} {what} by {request.requested_by}"
            + (f": {request.reason}" if request.reason else ""),
            {"request_id": request.id, "until": until.isoformat() if until else None},
            request.requested_by,
        )
        return Outcome.SUCCEEDED, f"{request.target} {what}"


def _silence_until(request: Request) -> datetime:
    return request.created_at.astimezone(UTC) + _args(SilenceArgs, request).span


def _args(model: type[A], request: Request) -> A:
    """The request's arguments as `model`; a row whose arguments do not fit is rejected
    with the reason (whoever may insert a request chooses them)."""
    try:
        return model.parse(request.args)
    except ArgsError as exc:
        raise Rejected(str(exc)) from None
