"""Windowed checks that read each row about once: per-bucket partial aggregates.

The agent's windowed checks (quality row rules, metric, volume) re-read their whole window at
every tick without this: a 24 h quality window checked every minute reads each row 1440 times.
Here, every table (with its time column and zone) that such checks watch is a *source* with
one in-memory state: per bucket of the time column (BUCKET wide), the partial aggregates of
every incremental check on it (rows, violations per rule, count / sum / min / max, the values
themselves for percentiles and for `references` rules). A tick:

1. refreshes the source: one scan of the rows with time > (the previous refresh's instant -
   `incremental_overlap`, rounded down to a bucket boundary), up to the tick's instant,
   grouped by bucket, with one FILTERed aggregate per check (all checks of the table at once,
   whichever of them ticks); those buckets replace the ones held, buckets older than the
   longest window are dropped;
2. combines the buckets wholly inside the check's window with the window's low edge read
   exactly (the raw rows from the window's start to the end of its bucket: at most one
   bucket's rows), so the answer is the full read's answer.

A full read of the longest window rebuilds the state at the first tick, every
`incremental_resync`, and as soon as PostgreSQL's statistics show updates or deletes in the
table (rows changed behind the watermark are not re-read otherwise; the counters reach the
statistics within about a second of a commit, a minute at worst under load). `references`
rules keep the multiset of their column's values, and which values the referenced table holds
is asked again at every tick (one lookup per distinct value): a later insert into the
referenced table changes the answer at once, exactly. Percentiles keep the multiset of values
and compute `percentile_cont` as PostgreSQL does. Sums of float columns are added in another
order than a full scan's: equal to the last few bits. stddev, unique and custom rules, views
and materialized views (a refresh rewrites them without counting deletes) are read whole.

Only the agent's scheduled ticks use it (`CheckEngine.incremental`); `pipectl check`, "check
now" and step gates read the window whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

import asyncpg

from pipectl.checks import cache, metric, quality, volume
from pipectl.checks.base import Context, zone
from pipectl.checks.catalog import Column, Table
from pipectl.checks.sql import Params, col, conjunction, filter_predicate
from pipectl.checks.timeseries import History
from pipectl.config import CheckBase, Config
from pipectl.identifiers import Relation
from pipectl.model import CheckResult
from pipectl.store.base import Conn

log = logging.getLogger(__name__)

BUCKET = timedelta(seconds=10)
"""Bucket width. The window's low edge costs a read of at most one bucket's rows per check
tick, and combining costs one step per bucket of the window: 10 s keeps the edge read small
beside a tick's new rows (ticks come every minute or more) and a 24 h window at 8640 buckets."""

_US = 1_000_000
_BUCKET_US = int(BUCKET.total_seconds()) * _US
_KINDS_INCREMENTAL = frozenset({"r", "p"})
"""Plain and partitioned tables: their statistics count updates and deletes."""

Op = Literal["sum", "min", "max", "bag"]
SourceKey = tuple[Relation, str, str]


@dataclass(frozen=True)
class Part:
    """One aggregate a check keeps per bucket: its SQL (over alias `checked`) and how two
    buckets' values combine."""

    sql: Callable[[Params], str]
    op: Op


def enabled_for(check: CheckBase, config: Config) -> bool:
    """The check's ticks may use partial aggregates: a kind and shape they answer exactly,
    a window of at least two buckets, and not opted out."""
    flag = getattr(check, "incremental", None)
    if flag is None:
        flag = config.check_defaults.incremental
    if not flag or not check.enabled:
        return False
    window = _window(check)
    return window is not None and window >= 2 * BUCKET


def _window(check: CheckBase) -> timedelta | None:
    if isinstance(check, quality.QualityCheck):
        if check.rule.type not in quality.FUSABLE:
            return None
        return check.window
    if isinstance(check, metric.MetricCheck):
        return None if check.aggregate == "stddev" else check.window
    if isinstance(check, volume.VolumeCheck):
        return check.window
    if isinstance(check, cache.CacheCheck) and check.source == "app":
        return check.window
    return None


def source_of(check: CheckBase) -> SourceKey:
    if isinstance(check, quality.QualityCheck):
        assert check.time_column is not None
        return (check.table, check.time_column, check.timezone)
    if isinstance(check, metric.MetricCheck):
        return (check.table, check.time_column, check.timezone)
    if isinstance(check, cache.CacheCheck):
        assert check.table is not None
        assert check.time_column is not None
        return (check.table, check.time_column, "UTC")
    assert isinstance(check, volume.VolumeCheck)
    return (check.table, check.column, check.timezone)


def parts_of(check: CheckBase) -> list[Part]:
    """What the check keeps per bucket (besides the bucket's row count, kept once)."""
    if isinstance(check, quality.QualityCheck):
        rule = check.rule
        if rule.type == "references":
            c = f"checked.{col(rule.column or '')}"
            return [Part(lambda p: f"array_agg({c}) FILTER (WHERE {c} IS NOT NULL)", "bag")]
        return [
            Part(
                lambda p: f"count(*) FILTER (WHERE {quality.violation_predicate(rule, p)})",
                "sum",
            )
        ]
    if isinstance(check, volume.VolumeCheck):
        return []
    if isinstance(check, cache.CacheCheck):
        return [_level_part(col(check.column or ""), name) for name in cache.LEVELS]
    assert isinstance(check, metric.MetricCheck)
    m = check

    def where(p: Params, *more: str) -> str:
        return conjunction([*(filter_predicate(f, p) for f in m.where), *more])

    def matching(p: Params) -> str:
        shared = [filter_predicate(f, p) for f in m.share_of]
        return f"count(*) FILTER (WHERE {where(p, *shared)})"

    rows = Part(lambda p: f"count(*) FILTER (WHERE {where(p)})", "sum")
    if m.aggregate == "share":
        return [rows, Part(matching, "sum")]
    if m.column is None:
        return [rows]
    c = col(m.column)
    if m.aggregate == "count":
        return [rows, Part(lambda p: f"count({c}) FILTER (WHERE {where(p)})", "sum")]
    if m.aggregate in ("avg", "sum"):
        return [
            rows,
            Part(lambda p: f"count({c}) FILTER (WHERE {where(p)})", "sum"),
            Part(lambda p: f"sum({c}) FILTER (WHERE {where(p)})", "sum"),
        ]
    if m.aggregate in ("min", "max"):
        op: Op = "min" if m.aggregate == "min" else "max"
        return [rows, Part(lambda p: f"{m.aggregate}({c}) FILTER (WHERE {where(p)})", op)]
    # percentiles: the exact multiset of values
    return [
        rows,
        Part(
            lambda p: f"array_agg({c}::float8) FILTER (WHERE {where(p, f'{c} IS NOT NULL')})", "bag"
        ),
    ]


def _level_part(level: str, name: str) -> Part:
    """Requests answered by one cache level (the names are pipectl's, never config's)."""
    return Part(lambda p: f"count(*) FILTER (WHERE {level} = '{name}')", "sum")


def _merge(op: Op, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if op == "sum":
        return a + b
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    merged = Counter(a)
    merged.update(b)
    return merged


def _stored(op: Op, value: Any) -> Any:
    """A fetched aggregate as kept: arrays become value -> count."""
    if op == "bag":
        return None if value is None else Counter(value)
    return value


@dataclass
class _State:
    """One source's buckets. Bucket k holds rows with epoch time in ((k-1)*BUCKET, k*BUCKET]
    (the column's own time: wall clock for a timestamp without time zone)."""

    buckets: dict[int, list[Any]] = field(default_factory=dict)
    first: int = 0
    """The first bucket held whole."""
    high: int = 0
    """Epoch microseconds up to which rows were read (the last refresh's instant)."""
    resynced_at: datetime | None = None
    changes: int | None = None
    """Updates + deletes in the table's statistics at the last refresh."""
    edges: dict[int, list[Any]] = field(default_factory=dict)
    """Low-edge reads (by the edge's epoch microseconds) since the last refresh."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WindowCache:
    """Partial aggregates of every incremental check of one config, by source. Lives as long
    as the agent's check engine (a reload builds a new one: one full read per source)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.overlap_us = int(config.check_defaults.incremental_overlap / timedelta(microseconds=1))
        self.resync = config.check_defaults.incremental_resync
        self.members: dict[SourceKey, list[CheckBase]] = {}
        for check in config.checks:
            if enabled_for(check, config):
                self.members.setdefault(source_of(check), []).append(check)
        self._states: dict[SourceKey, _State] = {}
        self.broken: set[SourceKey] = set()
        """Tables whose incremental read failed: read whole until the next config load."""
        self.rows_read = 0
        """Rows the refreshes and edge reads returned aggregates of (for tests and logs)."""
        self.full_reads = 0

    def covers(self, check: CheckBase) -> bool:
        return any(check.name == c.name for found in self.members.values() for c in found)

    async def run(self, ctx: Context[Any]) -> CheckResult:
        """The check's result from the shared buckets (refreshed up to ctx.now first)."""
        return (await self.run_many(ctx, [ctx.check]))[0]

    async def run_many(self, ctx: Context[Any], checks: Sequence[CheckBase]) -> list[CheckResult]:
        """Results of checks of one source at ctx.now, from one refresh."""
        key = source_of(checks[0])
        table = ctx.table(key[0])
        column = table.column(key[1])
        if table.kind not in _KINDS_INCREMENTAL or not column.indexed or key in self.broken:
            # Without an index on the time column, reading the new rows is a scan of the
            # whole table: the partial aggregates would only add the edge's scans to it.
            raise NotIncremental
        state = self._states.setdefault(key, _State())
        async with state.lock:
            if key in self.broken:
                raise NotIncremental
            try:
                return await self._answer(ctx, checks, key, table, column, state)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.QueryCanceledError):
                    raise  # a timeout: the next tick tries again
                # One check's SQL failing (a column dropped since start-up) would fail every
                # check of the table: from now on each reads its window whole and reports its
                # own problem, until the config is loaded again.
                self.broken.add(key)
                self._states.pop(key, None)
                log.warning(
                    "incremental read of %s failed (%s): its checks read their windows whole"
                    " until the agent reloads its config",
                    key[0],
                    type(exc).__name__,
                )
                raise

    async def _answer(
        self,
        ctx: Context[Any],
        checks: Sequence[CheckBase],
        key: SourceKey,
        table: Table,
        column: Column,
        state: _State,
    ) -> list[CheckResult]:
        """Refresh the table's buckets up to ctx.now, then answer each check from them."""
        tz = zone(key[2])
        high = _epoch_us(ctx.now, column, tz)
        await self._refresh(ctx.conn, key, table, column, state, high, ctx.now)
        results = []
        for check in checks:
            window = _window(check)
            assert window is not None
            low = _epoch_us(ctx.now - window, column, tz)
            fields = self._fields(key, check)
            totals = await self._window_totals(ctx.conn, key, table, state, low, high, fields)
            results.append(await self._result(ctx, check, table, totals))
        return results

    # ------------------------------------------------------------------ reading

    async def _refresh(
        self,
        conn: Conn,
        key: SourceKey,
        table: Table,
        column: Column,
        state: _State,
        high: int,
        now: datetime,
    ) -> None:
        longest = max(_window(c) or timedelta(0) for c in self.members[key])
        oldest = _bucket(high - int(longest / timedelta(microseconds=1)))
        changes = await conn.fetchval(_CHANGES_SQL, key[0].sql)
        full = (
            state.resynced_at is None
            or now - state.resynced_at >= self.resync
            or now < state.resynced_at
            or changes != state.changes
            or state.first > oldest
        )
        since = _bucket(min(state.high, high) - self.overlap_us)
        start = oldest if full else max(since, oldest)
        fresh = await self._read(conn, key, table, (start - 1) * _BUCKET_US, high)
        if full:
            state.buckets = fresh
            state.first = oldest
            state.resynced_at = now
            self.full_reads += 1
        else:
            for k in [k for k in state.buckets if k >= start or k < oldest]:
                del state.buckets[k]
            state.buckets.update(fresh)
            state.first = max(state.first, oldest)
        state.high = high
        state.changes = changes
        state.edges = {}

    async def _read(
        self, conn: Conn, key: SourceKey, table: Table, low: int, high: int
    ) -> dict[int, list[Any]]:
        """Partial aggregates per bucket of the rows with time in (low, high]."""
        members = self.members[key]
        column = table.column(key[1])
        params = Params()
        t = f"checked.{col(key[1])}"
        width = params.add(int(BUCKET.total_seconds()))
        bucket = f"ceil(extract(epoch FROM {t}) / {width}::numeric)::bigint"
        ops: list[Op] = ["sum"]
        selects = ["count(*)"]
        for check in members:
            for part in parts_of(check):
                selects.append(part.sql(params))
                ops.append(part.op)
        span = (
            f"{t} > {params.add(_from_epoch_us(low, column))}"
            f" AND {t} <= {params.add(_from_epoch_us(high, column))}"
        )
        columns = ", ".join(f"{s} AS a{i}" for i, s in enumerate(selects))
        sql = (
            f"SELECT {bucket} AS b, {columns} FROM {key[0].sql} AS checked WHERE {span} GROUP BY 1"
        )
        # Filter and accepted values take their column's type; the bounds are in it already.
        rows = await conn.fetch(sql, *params.values(table, zone(key[2])))
        out: dict[int, list[Any]] = {}
        for row in rows:
            out[int(row["b"])] = [_stored(op, row[f"a{i}"]) for i, op in enumerate(ops)]
            self.rows_read += int(row["a0"])
        return out

    async def _window_totals(
        self,
        conn: Conn,
        key: SourceKey,
        table: Table,
        state: _State,
        low: int,
        high: int,
        fields: list[int],
    ) -> list[Any]:
        """The parts at `fields` summed over (low, high]: the buckets wholly inside, plus the
        low edge's rows read exactly."""
        edge_bucket = _bucket(low)
        edge_end = edge_bucket * _BUCKET_US
        ops = self._ops(key)
        chosen = [ops[i] for i in fields]
        totals: list[Any] = [Counter() if op == "bag" else None for op in chosen]

        def add(values: list[Any]) -> None:
            for j, (i, op) in enumerate(zip(fields, chosen, strict=True)):
                value = values[i]
                if value is None:
                    continue
                if op == "bag":
                    totals[j].update(value)
                else:
                    totals[j] = _merge(op, totals[j], value)

        if edge_end > low:
            edge = state.edges.get(low)
            if edge is None:
                found = await self._read(conn, key, table, low, min(edge_end, high))
                edge = found.get(edge_bucket, [None] * len(ops))
                state.edges[low] = edge
            add(edge)
        for k, values in state.buckets.items():
            if k > edge_bucket:
                add(values)
        return totals

    def _ops(self, key: SourceKey) -> list[Op]:
        return ["sum", *(part.op for check in self.members[key] for part in parts_of(check))]

    def _fields(self, key: SourceKey, check: CheckBase) -> list[int]:
        """Where the check's parts sit in a bucket's values (after the row count, at 0)."""
        offset = 1
        for member in self.members[key]:
            if member.name == check.name:
                return [0, *range(offset, offset + len(parts_of(member)))]
            offset += len(parts_of(member))
        raise KeyError(check.name)

    # ------------------------------------------------------------------ answering

    async def _result(
        self, ctx: Context[Any], check: CheckBase, table: Table, totals: list[Any]
    ) -> CheckResult:
        mine = totals[1:]
        rows = int(totals[0] or 0)
        sub: Context[Any] = dataclasses.replace(ctx, check=check)
        if isinstance(check, quality.QualityCheck):
            if check.rule.type == "references":
                violations = await _missing_references(ctx.conn, check, table, mine[0])
            else:
                violations = int(mine[0] or 0)
            observation = quality.Observation(rows, violations)
            return quality.evaluate(check, observation, ctx.now, ctx.source)
        if isinstance(check, volume.VolumeCheck):
            empty = rows == 0 and bool(
                await ctx.conn.fetchval(
                    f"SELECT max({col(check.column)}) IS NULL FROM {check.table.sql}"
                )
            )
            found = volume.Observation(rows, empty)
            hist = History([]) if empty else await volume.load_history(sub)
            return volume.evaluate(check, found, hist, ctx.now, ctx.source)
        if isinstance(check, cache.CacheCheck):
            counts = {name: int(n or 0) for name, n in zip(cache.LEVELS, mine, strict=True)}
            levels = cache.LevelCounts(counts, rows - sum(counts.values()))
            return cache.evaluate_levels(check, levels, ctx.now, ctx.source)
        assert isinstance(check, metric.MetricCheck)
        value, counted = _metric_value(check, mine)
        measured = metric.Observation(value, counted)
        judged = value is not None and not metric.too_few_rows(check, measured)
        hist_m = await metric.load_history(sub) if judged else History([])
        return metric.evaluate(check, measured, hist_m, ctx.now, ctx.source)


class NotIncremental(Exception):
    """This check's relation cannot be read incrementally (a view, or no index leading with
    the time column): read the window whole."""


_CHANGES_SQL = """
SELECT coalesce(sum(pg_stat_get_tuples_updated(r) + pg_stat_get_tuples_deleted(r)), 0)
FROM (SELECT to_regclass($1) AS r UNION SELECT relid FROM pg_partition_tree(to_regclass($1))) AS t
WHERE r IS NOT NULL
"""


def _metric_value(check: metric.MetricCheck, parts: list[Any]) -> tuple[float | None, int]:
    """The aggregate over the window from its summed parts, as the full probe computes it."""
    rows = int(parts[0] or 0)
    aggregate = check.aggregate
    if aggregate == "count":
        return float(int(parts[-1] or 0)), rows
    if aggregate == "share":
        return (None if rows == 0 else float(int(parts[1] or 0)) / float(rows)), rows
    if aggregate in ("avg", "sum"):
        counted, total = int(parts[1] or 0), parts[2]
        if counted == 0 or total is None:
            return None, rows
        if aggregate == "sum":
            return float(total), rows
        if isinstance(total, int | Decimal):
            return float(Fraction(total) / counted), rows
        return float(total) / counted, rows
    if aggregate in ("min", "max"):
        return (None if parts[1] is None else float(parts[1])), rows
    bag: Counter[float] | None = parts[1]
    if not bag:
        return None, rows
    fraction = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}[aggregate]
    return percentile_cont(bag, fraction), rows


def percentile_cont(bag: Counter[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont over a multiset (value -> count), in the same float8
    steps (orderedsetaggs.c): interpolate between the two rows around fraction * (n - 1)."""
    n = sum(bag.values())
    position = fraction * (n - 1)
    first_row, second_row = math.floor(position), math.ceil(position)
    values = sorted(bag)
    first = second = None
    seen = 0
    for value in values:
        seen += bag[value]
        if first is None and seen > first_row:
            first = value
        if seen > second_row:
            second = value
            break
    assert first is not None
    assert second is not None
    if first_row == second_row:
        return first
    return first + (position - first_row) * (second - first)


async def _missing_references(
    conn: Conn, check: quality.QualityCheck, table: Table, bag: Counter[Any] | None
) -> int:
    """Rows whose value the referenced table does not hold (now): each distinct value of the
    window looked up once."""
    if not bag:
        return 0
    rule = check.rule
    assert rule.ref_table is not None
    assert rule.ref_column is not None
    assert rule.column is not None
    kind = table.column(rule.column).display
    missing = await conn.fetch(
        f"SELECT u.v FROM unnest($1::{kind}[]) AS u(v) WHERE NOT EXISTS"
        f" (SELECT 1 FROM {rule.ref_table.sql} AS ref WHERE ref.{col(rule.ref_column)} = u.v)",
        list(bag),
    )
    return sum(bag[row["v"]] for row in missing)


def _bucket(epoch_us: int) -> int:
    """The bucket holding an instant: ((k-1)*BUCKET, k*BUCKET]."""
    return -(-epoch_us // _BUCKET_US)


def _epoch_us(when: datetime, column: Column, tz: Any) -> int:
    """An instant as the column holds it, in epoch microseconds (a timestamp without time
    zone: its wall clock in the check's zone, counted as if UTC, like extract(epoch))."""
    aware = when if column.type == "timestamptz" else when.astimezone(tz).replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _from_epoch_us(epoch_us: int, column: Column) -> datetime:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)
    return when if column.type == "timestamptz" else when.replace(tzinfo=None)
