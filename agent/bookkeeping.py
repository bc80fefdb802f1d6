"""Writes to the pipectl schema that must not be lost.

`Bookkeeper` runs store functions on the bookkeeping pool and waits out transient failures
(a restarting server): a run's outcome is the record operators trust. `RunLedger` makes sure
no run this agent created is left `queued` or `running` when the database refused to record
its end (disk full, read-only after a failover): the end is kept and written as soon as
writes work again, so nothing downstream waits forever on a run that is long over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from pipectl import store
from pipectl.clock import SYSTEM_CLOCK, Clock
from pipectl.model import RunStatus
from pipectl.resilience import Backoff, Outage, describe, is_transient

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Bookkeeper:
    """Runs store functions on the agent's bookkeeping pool, waiting out transient failures
    with backoff. `give_up_at` (monotonic) bounds the wait during shutdown. Errors that are
    not transient are raised at once. One log line per outage, not per attempt."""

    def __init__(self, pool: asyncpg.Pool, clock: Clock = SYSTEM_CLOCK) -> None:
        self.pool = pool
        self.clock = clock
        self.give_up_at: float | None = None
        self.outage = Outage("bookkeeping (pipectl schema writes)", log, clock=clock)

    async def __call__(
        self,
        fn: Callable[Concatenate[asyncpg.Pool, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        backoff = Backoff(0.2, 5.0, clock=self.clock)
        while True:
            try:
                result = await fn(self.pool, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or self._past_deadline():
                    raise
                self.outage.failed(exc)
                await backoff.sleep()
                continue
            self.outage.recovered()
            return result

    def _past_deadline(self) -> bool:
        return self.give_up_at is not None and self.clock.monotonic() >= self.give_up_at


@dataclass
class RunEnd:
    """How a run ended, as it will be written to pipectl.runs."""

    status: RunStatus
    rows: int | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class RunLedger:
    """Ends of this agent's runs, written now or, if the database refuses, later.

    `finish()` records a run's end through the bookkeeper; when that fails for a reason other
    than a transient one (disk full 53100, read-only 25006, a trigger, a privilege), the end
    is kept in `pending` and `repair()` (called on every heartbeat) writes it once writes work
    again. Until then `holds(run)` says the run is over whatever the table says."""

    def __init__(self, book: Bookkeeper) -> None:
        self.book = book
        self.pending: dict[int, RunEnd] = {}
        self.outage = Outage("recording run outcomes", log, clock=book.clock)

    def holds(self, run_id: int) -> bool:
        return run_id in self.pending

    async def finish(self, run_id: int, end: RunEnd) -> bool:
        """Write the end of `run_id`. True when recorded now (and still ours); False when a
        peer had already closed it, or when the write was refused and is pending."""
        try:
            recorded = await self._write(run_id, end)
        except Exception as exc:
            self._keep(run_id, end, exc)
            return False
        self.pending.pop(run_id, None)
        return recorded

    async def repair(self) -> int:
        """Write pending ends; how many were written. Stops at the first refusal."""
        written = 0
        for run_id, end in list(self.pending.items()):
            try:
                await self._write(run_id, end)
            except Exception as exc:
                self.outage.failed(exc)
                break
            self.pending.pop(run_id, None)
            written += 1
        if written and not self.pending:
            self.outage.recovered()
            log.info("recorded %d run outcome(s) the database had refused", written)
        return written

    async def _write(self, run_id: int, end: RunEnd) -> bool:
        return await self.book(
            store.finish_run,
            run_id,
            end.status,
            rows=end.rows,
            error=end.error,
            detail=end.detail,
        )

    def _keep(self, run_id: int, end: RunEnd, exc: BaseException) -> None:
        if run_id not in self.pending:
            note = f"(recorded late: the database refused it at first: {describe(exc)})"
            end = RunEnd(
                end.status, end.rows, f"{end.error} {note}" if end.error else note, end.detail
            )
        self.pending[run_id] = end
        self.outage.failed(exc)
