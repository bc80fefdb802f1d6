"""Tick times for steps and checks.

APScheduler 3's triggers do the calendar arithmetic (intervals, crontab, time zones, DST). We
dispatch ticks ourselves because a tick's identity must be its *nominal* time, identical on
every agent: interval triggers are anchored to a fixed epoch, and jitter is applied after a
tick is claimed, never to the time that names it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pipectl.durations import format_duration

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Schedule:
    trigger: BaseTrigger
    text: str
    misfire_grace: timedelta
    jitter: timedelta

    def next_after(self, now: datetime) -> datetime:
        """The first nominal tick strictly after `now`."""
        fire: datetime | None = self.trigger.get_next_fire_time(
            None, now + timedelta(microseconds=1)
        )
        if fire is None:  # pragma: no cover - our triggers never end
            raise RuntimeError(f"schedule {self.text} has no future ticks")
        return fire.astimezone(UTC)

    def jitter_delay(self) -> float:
        return random.uniform(0, self.jitter.total_seconds()) if self.jitter else 0.0


def interval_schedule(every: timedelta, misfire_grace: timedelta, jitter: timedelta) -> Schedule:
    trigger = IntervalTrigger(seconds=every.total_seconds(), start_date=EPOCH, timezone=UTC)
    return Schedule(trigger, f"every {format_duration(every)}", misfire_grace, jitter)


def cron_schedule(
    expr: str, timezone: str, misfire_grace: timedelta, jitter: timedelta
) -> Schedule:
    trigger = CronTrigger.from_crontab(expr, timezone=timezone)
    return Schedule(trigger, f"cron {expr} ({timezone})", misfire_grace, jitter)


TickHandler = Callable[[datetime, float], None]


async def tick_loop(
    schedule: Schedule,
    on_tick: TickHandler,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_next: Callable[[datetime], None] | None = None,
) -> None:
    """Sleep to each nominal tick and call on_tick(nominal, lateness_seconds).

    on_tick must not block: it hands the tick to a task owned by the caller, so a long run
    never delays the next tick and cancelling this loop (a config reload) never cancels a
    run in flight. Ticks missed while the process could not run are coalesced: the loop
    always plans the first tick after *now*.
    """
    while True:
        planned = schedule.next_after(clock())
        if on_next is not None:
            on_next(planned)
        await asyncio.sleep(max(0.0, (planned - clock()).total_seconds()))
        on_tick(planned, (clock() - planned).total_seconds())
