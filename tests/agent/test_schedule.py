"""Tick arithmetic: identical nominal times on every agent, cron in its zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipectl.agent.schedule import cron_schedule, interval_schedule


def test_interval_ticks_are_aligned_to_a_fixed_epoch() -> None:
    schedule = interval_schedule(timedelta(minutes=5), timedelta(minutes=1), timedelta(0))
    now = datetime(2026, 11, 25, 10, 7, 13, tzinfo=UTC)
    assert schedule.next_after(now) == datetime(2026, 11, 25, 10, 10, tzinfo=UTC)
    # A tick instant maps to the next one, not to itself.
    assert schedule.next_after(datetime(2026, 11, 25, 10, 10, tzinfo=UTC)) == datetime(
        2026, 11, 25, 10, 15, tzinfo=UTC
    )


def test_cron_ticks_follow_the_time_zone() -> None:
    schedule = cron_schedule("30 2 * * *", "Europe/Berlin", timedelta(minutes=1), timedelta(0))
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert schedule.next_after(now) == datetime(2026, 11, 26, 1, 30, tzinfo=UTC)


def test_jitter_is_bounded() -> None:
    schedule = interval_schedule(timedelta(minutes=1), timedelta(minutes=1), timedelta(seconds=3))
    delays = [schedule.jitter_delay() for _ in range(200)]
    assert all(0 <= d <= 3 for d in delays)
    assert max(delays) > 0
