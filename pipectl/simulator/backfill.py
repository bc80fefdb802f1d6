"""History: `days` of APES activity written in one transaction with binary COPY.

Counts are planned per hour first (rhythm x rate, Poisson noise, a little day-to-day
variation), which gives the exact total for progress; rows are then built hour by hour and
copied in chunks, so memory stays bounded whatever the span.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from pipectl.simulator import combos
from pipectl.simulator.faults import Effects
from pipectl.simulator.rhythm import FEEDS, poisson, weight
from pipectl.simulator.rows import Batch, RowFactory, naive_utc, uniform_times

CHUNK_ROWS = 5000
PLANNED = (
    "rule_performance",
    "user_feedback",
    "prompt_improvement_sessions",
    "improvement_sessions",
    "discovered_patterns",
)
# Which cache level answered, for history (no Redis traffic is replayed for the past).
HISTORY_LEVELS = (("L1", 0.30), ("L2", 0.56), ("L3", 0.05), ("MISS", 0.09))
HISTORY_PRESENT_AGE = timedelta(hours=1)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill wrote (or why it wrote nothing)."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False
    start: datetime | None = None
    end: datetime | None = None
    reason: str = ""

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime
    counts: dict[str, int]


def plan(rng: random.Random, start: datetime, end: datetime, rate: float) -> list[Slot]:
    """Row counts per table for each hour (the first and last may be partial)."""
    day_factor: dict[date, float] = {}
    slots: list[Slot] = []
    moment = start
    while moment < end:
        boundary = moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        slot_end = min(boundary, end)
        fraction = (slot_end - moment) / timedelta(hours=1)
        middle = moment + (slot_end - moment) / 2
        day = middle.date()
        if day not in day_factor:
            day_factor[day] = min(1.2, max(0.8, rng.gauss(1.0, 0.08)))
        level = weight(middle) * day_factor[day] * rate * fraction
        counts = {t: poisson(rng, FEEDS[t].peak_per_hour * level) for t in PLANNED}
        slots.append(Slot(moment, slot_end, counts))
        moment = slot_end
    return slots


async def has_history(conn: asyncpg.Connection, now: datetime) -> bool:
    """True when rule_performance already holds rows older than an hour before `now`."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM public.rule_performance WHERE created_at < $1)",
        naive_utc(now - HISTORY_PRESENT_AGE),
    )
    return bool(found)


async def earliest_activity(conn: asyncpg.Connection) -> datetime | None:
    value = await conn.fetchval("SELECT min(created_at) FROM public.rule_performance")
    return value.replace(tzinfo=UTC) if value is not None else None


class _Writer:
    """Buffers rows per table and COPYs them in chunks, reporting progress."""

    def __init__(self, conn: asyncpg.Connection, total: int, progress: Progress | None) -> None:
        self.conn = conn
        self.total = total
        self.progress = progress
        self.buffers: dict[str, Batch] = {}
        self.written: dict[str, int] = {}
        self.done = 0

    def add(self, batch: Batch) -> None:
        self.buffers.setdefault(batch.table, Batch(batch.table)).extend(batch)

    def buffered(self) -> int:
        return sum(len(b.records) for b in self.buffers.values())

    async def flush(self) -> None:
        for table, batch in self.buffers.items():
            if not batch.records:
                continue
            await self.conn.copy_records_to_table(
                table, schema_name="public", records=batch.records, columns=list(batch.columns)
            )
            self.written[table] = self.written.get(table, 0) + len(batch.records)
            self.done += len(batch.records)
        self.buffers.clear()
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


def _levels(rng: random.Random, count: int) -> list[str]:
    names = [name for name, _ in HISTORY_LEVELS]
    shares = [share for _, share in HISTORY_LEVELS]
    return rng.choices(names, shares, k=count)


async def write_history(
    conn: asyncpg.Connection,
    factory: RowFactory,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    rate: float,
    progress: Progress | None,
) -> BackfillReport:
    """Write the activity of [start, end) in one transaction."""
    began = time.monotonic()
    rng = factory.rng
    slots = plan(rng, start, end, rate)
    total = sum(sum(s.counts.values()) for s in slots)
    writer = _Writer(conn, total, progress)
    aggregates: dict[combos.Key, combos.Combination] = {}
    quiet = Effects()
    if progress is not None:
        progress(0, total)
    async with conn.transaction():
        for slot in slots:
            counts = slot.counts

            def times(table: str, slot: Slot = slot) -> list[datetime]:
                return uniform_times(rng, slot.counts[table], slot.start, slot.end)

            applications, observations = factory.rule_performance(times("rule_performance"), quiet)
            writer.add(applications)
            combos.aggregate(observations, aggregates)
            writer.add(factory.user_feedback(times("user_feedback"), quiet))
            requests = times("prompt_improvement_sessions")
            writer.add(factory.prompt_improvement(requests, _levels(rng, len(requests)), quiet))
            sessions = Batch("improvement_sessions")
            sessions.records = [
                factory.finished_session(at, now) for at in times("improvement_sessions")
            ]
            writer.add(sessions)
            writer.add(factory.discovered_patterns(times("discovered_patterns"), quiet, now=now))
            if writer.buffered() >= CHUNK_ROWS or counts is slots[-1].counts:
                await writer.flush()
        updated, inserted = await combos.upsert(conn, aggregates)
    rows = dict(writer.written)
    rows["rule_combinations"] = inserted + updated
    return BackfillReport(rows, time.monotonic() - began, False, start, end)
