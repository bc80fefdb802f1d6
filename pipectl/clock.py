"""Time for the agent and its tests: one injected clock for reading the time and for waiting.

- `SystemClock`: the host's clocks; waits on the event loop (monotonic time).
- `DatabaseClock`: wall time that follows the database server's clock, carried forward between
  readings on the host's monotonic clock. Ticks are named by their nominal time on every
  agent, so agents must agree on "now": the database is the one clock they all see. A host
  clock stepped a day ahead or five minutes back changes nothing; a change of the database's
  own clock is noticed at the next reading, logged, and the schedules re-plan from it.
- `FakeClock`: for tests; time moves only when the test says so, and every sleeper whose time
  has come wakes in order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall time, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds that only ever move forward; for durations and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait for `event` at most `seconds`; whether it was set."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        try:
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        except TimeoutError:
            return event.is_set()
        return True


SYSTEM_CLOCK = SystemClock()


class DatabaseClock:
    """Wall time anchored to the database's `now()`, moved forward by monotonic time.

    `sync()` takes a reading (the server's time and the round trip it took). Readings that
    move the anchor by less than `tolerance` are taken silently (network jitter); a larger
    move is logged once per reading and counted in `steps`, so that whoever schedules from
    this clock can re-plan."""

    def __init__(self, base: Clock | None = None, tolerance: float = 1.0) -> None:
        self.base = base or SYSTEM_CLOCK
        self.tolerance = tolerance
        self._anchor_wall = self.base.now()
        self._anchor_mono = self.base.monotonic()
        self.synced = False
        self._host_gap = 0.0
        self.steps = 0
        """How many times a reading moved this clock by more than `tolerance`."""

    def now(self) -> datetime:
        return self._anchor_wall + timedelta(seconds=self.base.monotonic() - self._anchor_mono)

    def monotonic(self) -> float:
        return self.base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        return await self.base.wait(event, seconds)

    def sync(self, server_now: datetime, round_trip: float) -> float:
        """Take a reading of the server's clock made `round_trip` seconds ago at most (the
        reading is assumed to be from the middle of the round trip). Returns how far this
        clock moved, in seconds (positive: forward). Logs when the database's clock stepped,
        and when this host's clock is (or has just stepped) off the database's."""
        reading = server_now + timedelta(seconds=max(0.0, round_trip) / 2)
        moved = (reading - self.now()).total_seconds()
        self._anchor_wall = reading
        self._anchor_mono = self.base.monotonic()
        gap = (self.base.now() - reading).total_seconds()
        if self.synced and abs(moved) > self.tolerance:
            self.steps += 1
            log.warning(
                "the database's clock moved %+.1fs against this host's monotonic clock; "
                "schedules re-plan from it",
                moved,
            )
        if abs(gap - self._host_gap) > self.tolerance or (not self.synced and abs(gap) > 1):
            log.warning(
                "this host's clock is %+.0fs off the database's (it was %+.0fs); pipectl "
                "schedules by the database's clock",
                gap,
                self._host_gap,
            )
        self._host_gap = gap
        self.synced = True
        return moved


class FakeClock:
    """A clock that moves only when told. `advance()` wakes sleepers in time order, letting
    each woken task run (and schedule its next sleep) before moving on; `jump()` moves the
    wall clock alone, as an NTP step or a wrong manual setting would."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime.now(UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), future))
        await future

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        if event.is_set():
            return True
        waiter = asyncio.ensure_future(event.wait())
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait([waiter, sleeper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()
        return event.is_set()

    def due(self) -> list[float]:
        """The monotonic times sleepers wait for, soonest first (a test can tell from it that
        a loop has gone back to sleep before it moves the clock)."""
        return sorted(due for due, _, future in self._sleepers if not future.done())

    def jump(self, seconds: float) -> None:
        """Step the wall clock alone (monotonic time does not move)."""
        self._wall += timedelta(seconds=seconds)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper due on the way in order."""
        target = self._mono + seconds
        while True:
            self._drop_cancelled()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            due, _, future = heapq.heappop(self._sleepers)
            self._move_to(due)
            future.set_result(None)
            await _let_run()
        self._move_to(target)
        await _let_run()

    def _move_to(self, mono: float) -> None:
        if mono > self._mono:
            self._wall += timedelta(seconds=mono - self._mono)
            self._mono = mono

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)


async def _let_run(rounds: int = 5) -> None:
    """Give woken tasks a few turns of the event loop (they may wake others in turn)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
