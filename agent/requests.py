"""Executes operator requests claimed from pipectl.requests, exactly once each."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from pipectl import store
from pipectl.db import describe_error
from pipectl.model import Outcome, Request, RequestKind, RunStatus, Trigger
from pipectl.request_args import ARGS_OF, ArgsError, RequestArgs, RerunArgs, SilenceArgs

if TYPE_CHECKING:
    from pipectl.agent.service import Agent

log = logging.getLogger(__name__)

A = TypeVar("A", bound=RequestArgs)


class Rejected(Exception):
    """The request cannot be carried out as asked (unknown target, bad arguments)."""


class RequestHandler:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def execute(self, request: Request) -> None:
        """Carry out one claimed request and record its outcome; never raises for bad input."""
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
            log.exception("request %d failed unexpectedly", request.id)
            outcome, detail = Outcome.FAILED, f"{type(exc).__name__}: {exc}"
        book = self.agent.book
        assert book is not None
        recorded = await book(
            store.finish_request, request.id, outcome, detail, claimed_by=request.claimed_by
        )
        if not recorded:
            log.warning("request %d was already finished or handed to another agent", request.id)
        self.agent.metrics.request_finished(str(request.kind), str(outcome))
        log.info("request %d %s: %s", request.id, outcome, detail, extra={"request_id": request.id})

    async def _cancelled(self, request: Request) -> None:
        """Stopped mid-way (shutdown, or declared lost). A request that changed nothing that
        cannot be done again goes back to the queue for the next agent; a rerun that made
        runs is recorded as cancelled (its runs are recorded as cancelled too). Claims that
        moved to another agent in the meantime are left alone."""
        book = self.agent.book
        assert book is not None
        assert request.claimed_by is not None
        if request.kind != RequestKind.RERUN or not await book(store.request_has_runs, request.id):
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
        handlers = {
            RequestKind.RERUN: self._rerun,
            RequestKind.CHECK: self._check,
            RequestKind.PAUSE: self._pause,
            RequestKind.RESUME: self._pause,
            RequestKind.SILENCE: self._silence,
            RequestKind.UNSILENCE: self._silence,
        }
        _args(ARGS_OF[request.kind], request)  # malformed arguments of any kind: rejected
        return await handlers[request.kind](request)

    def _step(self, request: Request) -> str:
        if request.target not in self.agent.plans:
            known = ", ".join(sorted(self.agent.plans)) or "none"
            raise Rejected(f"unknown step {request.target!r} (steps: {known})")
        return request.target

    async def _rerun(self, request: Request) -> tuple[Outcome, str]:
        step = self._step(request)
        steps = self.agent.dag.rerun(step, _args(RerunArgs, request).downstream)
        results = await self.agent.run_chain(
            steps, Trigger.MANUAL, requested_by=request.requested_by, request_id=request.id
        )
        summary = "; ".join(
            f"{name} {status} (run {run_id})"
            + (f": {error}" if error and status != RunStatus.SUCCEEDED else "")
            for name, run_id, status, error in results
        )
        ok = all(status == RunStatus.SUCCEEDED for _, _, status, _ in results)
        return (Outcome.SUCCEEDED if ok else Outcome.FAILED), summary

    async def _check(self, request: Request) -> tuple[Outcome, str]:
        agent = self.agent
        if agent.check_engine is None:
            raise Rejected("this agent runs no checks")
        enabled = [c.name for c in agent.config.checks if c.enabled]
        if request.target in ("*", "all"):
            names = enabled
        elif request.target in enabled:
            names = [request.target]
        else:
            raise Rejected(f"unknown check {request.target!r}")
        # All at once: checks that read the same rows share one scan, as on schedule.
        statuses = Counter(str(s) for s in (await agent.run_checks(names, "manual")).values())
        return Outcome.SUCCEEDED, f"{len(names)} checks ran: " + ", ".join(
            f"{count} {status}" for status, count in sorted(statuses.items())
        )

    async def _pause(self, request: Request) -> tuple[Outcome, str]:
        step = self._step(request)
        pause = request.kind == RequestKind.PAUSE
        book = self.agent.book
        assert book is not None
        await book(store.set_paused, step, pause, request.requested_by, request.reason)
        self.agent.metrics.step_paused_is(step, pause)
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
        names = {c.name for c in self.agent.config.checks}
        if request.target not in names:
            raise Rejected(f"unknown check {request.target!r}")
        book = self.agent.book
        assert book is not None
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
