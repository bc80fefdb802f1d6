"""Tick times for steps and checks.

APScheduler 3's triggers do the calendar arithmetic (intervals, crontab, time zones, DST). We
dispatch ticks ourselves because a tick's identity must be its *nominal* time, identical on
every agent: interval triggers are anchored to a fixed epoch, and jitter is applied after a
tick is claimed, never to the time that names it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from pipectl.clock import SYSTEM_CLOCK, Clock
from pipectl.durations import format_duration
from pipectl.resilience import Throttle

log = logging.getLogger(__name__)

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

# The longest single nap between two looks at the clock: a clock that was re-anchored (the
# database's clock stepped) is noticed within this time.
MAX_NAP = 30.0


async def tick_loop(
    schedule: Schedule,
    on_tick: TickHandler,
    *,
    clock: Clock = SYSTEM_CLOCK,
    on_next: Callable[[datetime], None] | None = None,
    what: str = "schedule",
) -> None:
    """Sleep to each nominal tick and call on_tick(nominal, lateness_seconds).

    on_tick must not block: it hands the tick to a task owned by the caller, so a long run
    never delays the next tick and cancelling this loop (a config reload) never cancels a
    run in flight. Ticks missed while the process could not run are coalesced: the loop
    always plans the first tick after *now*.

    Waits are on monotonic time, in naps of at most MAX_NAP; after each the tick is planned
    again from the clock. When the clock moved back so that an earlier tick is now the next
    one (or forward past the planned tick by more than a nap), that is logged: the ticks in
    between are skipped or taken by their name (at most once, by any agent)."""
    planned = schedule.next_after(clock.now())
    if on_next is not None:
        on_next(planned)
    while True:
        now = clock.now()
        wait = (planned - now).total_seconds()
        if wait > 0:
            replanned = schedule.next_after(now)
            if replanned < planned:
                log.warning(
                    "%s: the clock moved back %.0fs; next tick re-planned to %s",
                    what,
                    (planned - replanned).total_seconds(),
                    replanned.isoformat(timespec="seconds"),
                )
                planned = replanned
                if on_next is not None:
                    on_next(planned)
                continue
            await clock.sleep(min(wait, MAX_NAP))
            continue
        lateness = -wait
        if lateness > MAX_NAP + 1:
            log.warning(
                "%s: tick %s reached %.0fs late (the process was stopped, or the clock moved)",
                what,
                planned.isoformat(timespec="seconds"),
                lateness,
            )
        on_tick(planned, lateness)
        planned = schedule.next_after(max(now, planned))
        if on_next is not None:
            on_next(planned)


class InFlight:
    """At most one tick in flight per step or check. A tick that comes while the previous one
    has not finished is skipped (it coalesces into the one in flight), counted by `count` and
    logged at most once a minute per name. Queueing a run per tick instead grows a backlog
    while the runs wait, then drains it as runs moments apart."""

    def __init__(
        self,
        kind: str,
        why: str,
        logger: logging.Logger,
        clock: Clock,
        count: Callable[[str], None],
    ) -> None:
        self.kind = kind
        self.why = why
        self._count = count
        self._throttle = Throttle(logger, clock=clock)
        self._names: set[str] = set()

    def admit(self, name: str, nominal: datetime) -> bool:
        """Whether the tick may run now; False (skipped, counted, logged) while another of
        `name` is in flight. An admitted tick ends with `done(name)`."""
        if name in self._names:
            self._throttle.warning(
                f"{self.kind}:{name}",
                "%s %s: tick %s skipped, the previous tick has not finished yet (%s)",
                self.kind,
                name,
                nominal.isoformat(timespec="seconds"),
                self.why,
            )
            self._count(name)
            return False
        self._names.add(name)
        return True

    def done(self, name: str) -> None:
        self._names.discard(name)
