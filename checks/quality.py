"""quality: count the rows that break one rule, and the rows checked, in one query.

Rules: range, not_null, unique (rows beyond the first of each key; with a window, a new row
holding the key of an earlier row counts too; only a count when a unique index covers the
key), accepted (values from a list), references (NOT EXISTS in the referenced table),
json_keys (every element of a JSON array has `key`; a value that is not an array breaks the
rule too) and custom (operator-written SQL returning the count of violating rows; it is
config, so trusted, and runs like every probe in a read-only transaction under
statement_timeout). With `time_column` and `window` only
recent rows are checked, which keeps the probe on an index.

The result's value is the count, or the share with `as_share`; `rows_checked` and
`violations` go into the result's baseline for the scorecard. No row content is ever read into
pipectl or quoted in a message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from pydantic import Field, model_validator

from pipectl.checks.base import Context, KindSpec, Riding, number, point, zone
from pipectl.checks.catalog import (
    COMPARABLE_TYPES,
    JSON_TYPES,
    NUMERIC_TYPES,
    TEXT_TYPES,
    TIME_TYPES,
    Catalog,
    Need,
    python_value,
)
from pipectl.checks.sql import Params, Query, col
from pipectl.checks.sql import window_predicate as window_sql
from pipectl.config import (
    CheckBase,
    ColumnName,
    Config,
    PositiveDuration,
    RelationName,
    Strict,
    TimeZone,
)
from pipectl.durations import format_duration
from pipectl.identifiers import Relation
from pipectl.model import CheckResult, CheckStatus
from pipectl.store.base import Conn


class QualityRule(Strict):
    """Exactly one rule per quality check; the check counts the rows that break it."""

    type: Literal["range", "not_null", "unique", "accepted", "references", "json_keys", "custom"]
    column: ColumnName | None = None
    columns: list[ColumnName] = Field(default_factory=list)
    min: float | None = None
    max: float | None = None
    values: list[str | int | float] = Field(default_factory=list)
    ref_table: RelationName | None = None
    ref_column: ColumnName | None = None
    key: str | None = None
    sql: str | None = None
    dimension: Literal["completeness", "accuracy", "consistency"] | None = None

    @model_validator(mode="after")
    def _shape(self) -> QualityRule:
        needs: dict[str, tuple[str, ...]] = {
            "range": ("column",),
            "not_null": ("column",),
            "unique": ("columns",),
            "accepted": ("column", "values"),
            "references": ("column", "ref_table", "ref_column"),
            "json_keys": ("column", "key"),
            "custom": ("sql",),
        }
        missing = [k for k in needs[self.type] if not getattr(self, k)]
        if missing:
            raise ValueError(f"rule type {self.type!r} needs {', '.join(missing)}")
        if self.type == "range" and self.min is None and self.max is None:
            raise ValueError("rule type 'range' needs 'min', 'max' or both")
        return self


class QualityCheck(CheckBase):
    kind: Literal["quality"]
    table: RelationName
    rule: QualityRule
    time_column: ColumnName | None = None
    window: PositiveDuration | None = None
    timezone: TimeZone = "UTC"
    warn_over: float = Field(default=0.0, ge=0)
    fail_over: float | None = Field(default=None, ge=0)
    as_share: bool = False
    incremental: bool | None = None
    """The agent's ticks read only new rows (None: check_defaults.incremental)."""

    @model_validator(mode="after")
    def _window(self) -> QualityCheck:
        if (self.time_column is None) != (self.window is None):
            raise ValueError("'time_column' and 'window' go together: give both or neither")
        if self.incremental and (self.window is None or self.rule.type not in FUSABLE):
            raise ValueError(
                "'incremental' applies to windowed row rules (range, not_null, accepted,"
                " references, json_keys); this check reads its whole scope at every tick"
            )
        return self


DIMENSIONS = {
    "not_null": "completeness",
    "range": "accuracy",
    "accepted": "accuracy",
    "references": "consistency",
    "json_keys": "consistency",
    "unique": "consistency",
    "custom": "consistency",
}
_ROW = "checked"  # alias of the checked table inside probes
_REF = "ref"
_EARLIER = "earlier"  # rows outside a unique check's window

SLICES = 2
"""A scan that counts distinct keys runs as this many slices of the key, side by side, when
PostgreSQL may give it parallel workers (`slicing`: without them, in one pass). Each slice
scans the whole table: more slices than cores lose (three on two cores: 0.62 s against 0.42 s
at 1M rows)."""


def dimension(rule: QualityRule) -> str:
    """The scorecard dimension a rule counts towards."""
    return rule.dimension or DIMENSIONS[rule.type]


@dataclass(frozen=True)
class Observation:
    rows_checked: int
    violations: int
    guaranteed_by: str | None = None
    """The unique index that makes duplicates impossible (nothing was grouped)."""


def _scope(check: QualityCheck, params: Params, now: datetime) -> str:
    if check.time_column is None or check.window is None:
        return "TRUE"
    return window_sql(check.time_column, params, now - check.window, now)


def violation_predicate(rule: QualityRule, params: Params) -> str:
    """True for a row that breaks the rule (count-filter rule types)."""
    c = f"{_ROW}.{col(rule.column or '')}"
    if rule.type == "not_null":
        return f"{c} IS NULL"
    if rule.type == "range":
        sides = []
        if rule.min is not None:
            sides.append(f"{c} < {params.add(float(rule.min))}::float8")
        if rule.max is not None:
            sides.append(f"{c} > {params.add(float(rule.max))}::float8")
        return " OR ".join(sides)
    if rule.type == "accepted":
        values = params.add(list(rule.values), as_column=rule.column)
        return f"{c} IS NOT NULL AND NOT ({c} = ANY({values}))"
    if rule.type == "references":
        assert rule.ref_table is not None
        assert rule.ref_column is not None
        return (
            f"{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {rule.ref_table.sql} AS {_REF}"
            f" WHERE {_REF}.{col(rule.ref_column)} = {c})"
        )
    if rule.type == "json_keys":
        doc = f"{c}::jsonb"
        key = params.add(rule.key)
        return (
            f"{c} IS NOT NULL AND (jsonb_typeof({doc}) <> 'array' OR EXISTS ("
            f"SELECT 1 FROM jsonb_array_elements("
            f"CASE WHEN jsonb_typeof({doc}) = 'array' THEN {doc} END) AS e(elem)"
            f" WHERE NOT (jsonb_typeof(e.elem) = 'object' AND e.elem ? {key}::text)))"
        )
    raise ValueError(f"rule type {rule.type!r} is not a row predicate")


def _unique_sql(
    check: QualityCheck, params: Params, now: datetime, *, per_key: bool, slices: Slices
) -> str:
    """Rows checked and rows beyond the first of each key, by the key's shape.

    The whole table on a single column: `count(key) - count(DISTINCT key)`, sorting the keys
    (faster than grouping them on a uuid key, bench/FINDINGS.md), in slices of the key's hash
    that PostgreSQL's parallel workers sort side by side (`in_slices`). Several columns:
    the rows read into a CTE, then grouped (faster than count(DISTINCT) of a row, and than
    one grouped pass). With a window, a new row whose key is also held by a row outside the
    window (an old key arriving again) counts too: the distinct new keys are looked up among
    the other rows, one index lookup per key when `per_key` (an index leads with the key's
    first column), else in one hashed pass over the table."""
    rule = check.rule
    scope = _scope(check, params, now)
    source = f"{check.table.sql} AS {_ROW}"
    if check.window is None and len(rule.columns) == 1:
        key = f"{_ROW}.{col(rule.columns[0])}"
        select = f"count(*) AS rows_checked, {_duplicates(key)} AS violations"
        names = ["rows_checked", "violations"]
        return in_slices(select, f"FROM {source} WHERE {scope}", key, names, slices)
    keys = ", ".join(f"{_ROW}.{col(c)}" for c in rule.columns)
    present = " AND ".join(f"{_ROW}.{col(c)} IS NOT NULL" for c in rule.columns)
    grouped = (
        f"SELECT {keys}, count(*) AS n, ({present}) AS present"
        f" FROM {source} WHERE {scope} GROUP BY {keys}"
    )
    if check.window is None or check.time_column is None:
        # The scope read once into a CTE, then grouped: at 10M rows 2.3x faster than one
        # grouped pass carrying a `present` column (bench/FINDINGS.md).
        plain = ", ".join(col(c) for c in rule.columns)
        bare = " AND ".join(f"{col(c)} IS NOT NULL" for c in rule.columns)
        return (
            f"WITH scope AS (SELECT {plain} FROM {source} WHERE {scope})"
            " SELECT (SELECT count(*) FROM scope) AS rows_checked,"
            " (SELECT coalesce(sum(n - 1), 0) FROM"
            f" (SELECT count(*) AS n FROM scope WHERE {bare} GROUP BY {plain}) AS keys)"
            " AS violations"
        )
    match = " AND ".join(f"{_EARLIER}.{col(c)} = keys.{col(c)}" for c in rule.columns)
    time = f"{_EARLIER}.{col(check.time_column)}"
    low = params.add(now - check.window, as_column=check.time_column)
    high = params.add(now, as_column=check.time_column)
    earlier = f"SELECT 1 FROM {check.table.sql} AS {_EARLIER} WHERE {match}"
    # Outside the window (low, high]: before it, after it, or no time at all.
    outside = (f"{time} <= {low}", f"{time} > {high}", f"{time} IS NULL")
    if per_key:
        # One EXISTS per side of the window, each an index range under an index on (key,
        # time): the lookup stops at the window's edge instead of fetching the key's new rows
        # from the heap to reject them. PostgreSQL runs each per new key (or hashes a side
        # that holds few rows, like the rows after the window through the time index). As one
        # EXISTS it became a semi-join that hashed the whole table: 7.3 s against 0.7 s at 10M
        # rows with 1 % new (bench/FINDINGS.md).
        # The keys are looked up in the index's order, so neighbouring lookups share its
        # pages: 2.3-3x faster than in the grouping's (random) order at 10M rows.
        order = ", ".join(col(c) for c in rule.columns)
        looked_up = f"(SELECT * FROM keys ORDER BY {order}) AS keys"
        found = " OR ".join(f"EXISTS ({earlier} AND {side})" for side in outside)
    else:
        # No index to look a key up: one semi-join, which hashes the table once (an EXISTS
        # per new key would be a sequential scan per key).
        looked_up = "keys"
        found = f"EXISTS ({earlier} AND ({' OR '.join(outside)}))"
    return (
        f"WITH keys AS ({grouped})"
        " SELECT (SELECT coalesce(sum(n), 0) FROM keys) AS rows_checked,"
        " (SELECT coalesce(sum(n - 1) FILTER (WHERE present), 0) FROM keys)"
        f" + (SELECT count(*) FROM {looked_up} WHERE present AND ({found})) AS violations"
    )


def query(
    check: QualityCheck, now: datetime, *, per_key: bool = True, slices: Slices | None = None
) -> Query:
    """The probe; `per_key` (a windowed unique key an index can look up, the plan shown by
    default) or not and `slices` (a whole-table key of one column; one pass by default, as
    its type is not known here) are decided by `probe` from the catalog and the session."""
    params = Params()
    rule = check.rule
    source = f"{check.table.sql} AS {_ROW}"
    if rule.type == "unique":
        sql = _unique_sql(check, params, now, per_key=per_key, slices=slices or Slices())
    elif rule.type == "custom":
        scope = _scope(check, params, now)
        custom = (rule.sql or "").strip().rstrip(";").strip()
        sql = (
            f"SELECT (SELECT count(*) FROM {source} WHERE {scope}) AS rows_checked,"
            f" ({custom}\n) AS violations"
        )
    else:
        predicate = violation_predicate(rule, params)
        scope = _scope(check, params, now)
        sql = (
            "SELECT count(*) AS rows_checked,"
            f" count(*) FILTER (WHERE {predicate}) AS violations"
            f" FROM {source} WHERE {scope}"
        )
    return Query(sql, params)


# A valid unique index (or the constraint behind one) whose key columns all belong to the
# checked key, without a predicate or expressions: no two rows share the key (NULLs aside,
# and rows with a NULL in the key are never counted), so no probe needs to look.
_UNIQUE_INDEX_SQL = """
SELECT ic.relname AS index
FROM pg_class t
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_index i ON i.indrelid = t.oid
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE n.nspname = $1 AND t.relname = $2 AND i.indisunique AND i.indisvalid
  AND i.indpred IS NULL AND i.indexprs IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
      LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
      WHERE k.position <= i.indnkeyatts
        AND (a.attname IS NULL OR a.attname::text <> ALL($3::text[])))
ORDER BY i.indisprimary DESC, ic.relname
LIMIT 1
"""


def count_query(check: QualityCheck, now: datetime) -> Query:
    """Only the rows checked (a unique key the database guarantees)."""
    params = Params()
    scope = _scope(check, params, now)
    return Query(
        f"SELECT count(*) AS rows_checked, 0 AS violations FROM {check.table.sql} AS {_ROW}"
        f" WHERE {scope}",
        params,
    )


async def unique_index(conn: Conn, check: QualityCheck) -> str | None:
    """The unique index that guarantees the check's key, looked up when the probe runs (an
    index dropped since start-up is not trusted)."""
    found = await conn.fetchval(
        _UNIQUE_INDEX_SQL, check.table.schema, check.table.name, list(check.rule.columns)
    )
    return None if found is None else str(found)


# A valid index without a predicate led by the key's first column: PostgreSQL can look each
# new key up through it (a partial index may not hold the rows looked for). Only the first
# column, as config check advises: an index led by another key column may be a poor one (on
# APES's (prompt_id, rule_id), rule_id's index holds a twentieth of the table per value, and
# a lookup per key through it would read far more than the one hashed pass).
_LOOKUP_INDEX_SQL = """
SELECT EXISTS (
    SELECT 1
    FROM pg_class t
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_index i ON i.indrelid = t.oid
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
    WHERE n.nspname = $1 AND t.relname = $2 AND i.indisvalid AND i.indpred IS NULL
      AND am.amname IN ('btree', 'hash') AND a.attname = $3)
"""


async def lookup_index(ctx: Context[QualityCheck]) -> bool:
    """Whether an index can find a key's rows (looked up when the probe runs)."""
    check = ctx.check
    found = await ctx.conn.fetchval(
        _LOOKUP_INDEX_SQL, check.table.schema, check.table.name, check.rule.columns[0]
    )
    return bool(found)


async def probe(ctx: Context[QualityCheck]) -> Observation:
    check = ctx.check
    guaranteed_by = await unique_index(ctx.conn, check) if check.rule.type == "unique" else None
    if guaranteed_by is not None:
        found = count_query(check, ctx.now)
    elif check.rule.type == "unique" and check.window is not None:
        found = query(check, ctx.now, per_key=await lookup_index(ctx))
        # Not worth compiling: the lookups' estimated cost passes the JIT thresholds, and
        # compiling took 0.3-0.4 s of a 0.7 s probe at 10M rows (bench/FINDINGS.md).
        await ctx.conn.execute("SET LOCAL jit = off")
    elif check.rule.type == "unique" and shares_scan(check):  # one column, sorted in slices
        found = query(check, ctx.now, slices=await slicing(ctx, [check]))
    else:
        found = query(check, ctx.now)
    row = await found.fetchrow(ctx.conn, ctx.table(check.table), zone(check.timezone))
    return Observation(int(row["rows_checked"] or 0), int(row["violations"] or 0), guaranteed_by)


# Rules a shared probe can answer: the row predicates, counted side by side in one scan. Not
# unique: a scan grouped by its key with the other counts summed over the groups was measured
# slower than the key's own probe plus one count scan (bench (a), 10M rows: 20.7 s against
# 10.1 s + 3.7 s). A whole-table key of one column does share (`shares_scan`): its
# count(DISTINCT) is one more column of the scan, which runs in two slices (below).
FUSABLE = frozenset({"not_null", "range", "accepted", "references", "json_keys"})


def shares_scan(check: QualityCheck) -> bool:
    """A rule the shared scan of its table and scope can answer."""
    rule = check.rule
    if rule.type == "unique":
        return check.window is None and len(rule.columns) == 1
    return rule.type in FUSABLE


def fusion_key(check: QualityCheck) -> tuple[str, str | None, timedelta | None, str] | None:
    """Checks with equal keys read exactly the same rows, so one probe can answer them all."""
    if not shares_scan(check):
        return None
    return (check.table.sql, check.time_column, check.window, check.timezone)


def whole_table_scan(table: Relation, timezone: str) -> Hashable:
    """The engine's share key of the scan of all of `table`'s rows (quality rules without a
    window): what a check of another kind that counts them can ride (`base.Ride`)."""
    return ("quality", (table.sql, None, None, timezone))


def _shared_count(check: QualityCheck, params: Params, guaranteed: bool) -> str:
    """The violations of one check, as a column of the shared scan."""
    if check.rule.type != "unique":
        return f"count(*) FILTER (WHERE {violation_predicate(check.rule, params)})"
    if guaranteed:
        return "0"
    return _duplicates(f"{_ROW}.{col(check.rule.columns[0])}")


def _duplicates(key: str) -> str:
    """Rows beyond the first of each value of a one-column key (NULLs never count)."""
    return f"count({key}) - count(DISTINCT {key})"


def fused_query(
    checks: Sequence[QualityCheck],
    now: datetime,
    guaranteed: frozenset[str] = frozenset(),
    slices: Slices | None = None,
    riders: Sequence[Riding] = (),
) -> Query:
    """One scan answering several checks of one scope (equal `fusion_key`): `rows_checked`,
    then `v0`, `v1`, ... the violations of each check in order, then `r0_0`, `r0_1`, ... the
    counts each of `riders` asks for. `guaranteed` names the unique checks a unique index
    covers (only counted).

    count(DISTINCT) sorts in one process, where PostgreSQL would share a plain scan's counts
    among its parallel workers. With one such key, the scan is split by the key's hash into
    `slices`: every row of a key falls in the same slice, so the slices' counts add up to the
    whole table's, and PostgreSQL runs the slices in parallel workers (a Parallel Append),
    each sorting its share of the keys. At 1M rows on two cores: 0.42 s against 0.60 s for
    one pass (bench/FINDINGS.md). Keys of different columns stay in one pass."""
    params = Params()
    first = checks[0]
    scope = _scope(first, params, now)
    counts = {"rows_checked": "count(*)"}
    for i, check in enumerate(checks):
        counts[f"v{i}"] = _shared_count(check, params, check.name in guaranteed)
    for i, riding in enumerate(riders):
        for j, count in enumerate(riding.ride.columns(riding.check, params, now)):
            counts[_rider_column(i, j)] = count
    select = ", ".join(f"{count} AS {name}" for name, count in counts.items())
    source = f"FROM {first.table.sql} AS {_ROW} WHERE {scope}"
    keys = {
        c.rule.columns[0] for c in checks if c.rule.type == "unique" and c.name not in guaranteed
    }
    if len(keys) != 1:
        return Query(f"SELECT {select} {source}", params)
    key = f"{_ROW}.{col(keys.pop())}"
    return Query(in_slices(select, source, key, list(counts), slices or Slices()), params)


def _rider_column(rider: int, count: int) -> str:
    return f"r{rider}_{count}"


# The key types whose counts are sliced, by their hash function (pg_type.typname). Only
# these: a type without a hash function (money, bit, tsvector...) could not be sliced, and
# hash_record_extended, which hashes any hashable type, is PostgreSQL 14+ and 13 % slower at
# 1M uuid keys (bench/FINDINGS.md).
_HASH_OF_TYPE = {
    "uuid": "uuid_hash_extended",
    "text": "hashtextextended",
    "varchar": "hashtextextended",
    "bpchar": "hashbpcharextended",
    "int8": "hashint8extended",
    "int4": "hashint4extended",
    "int2": "hashint2extended",
}


# Key types sliced by value where the column has statistics: a comparison per row instead of
# a hash (1M uuid keys: 436-447 against 446-472 ms, bench/FINDINGS.md). Each type's parser
# checks a bound read from pg_stats before it becomes a literal of the query.
_BY_VALUE: dict[str, Callable[[str], object]] = {
    "uuid": uuid.UUID,
    "int2": int,
    "int4": int,
    "int8": int,
}


@dataclass(frozen=True)
class Slices:
    """How a scan that counts distinct keys is split (`in_slices`)."""

    count: int = SLICES
    key_type: str | None = None
    """pg_type.typname of the key: only a type of `_HASH_OF_TYPE` is sliced."""
    bounds: tuple[str, ...] = ()
    """`count - 1` values of a `_BY_VALUE` key (as their type prints them) where the slices
    split, from the column's histogram; none: the slices split by the key's hash."""


def in_slices(select: str, source: str, key: str, names: Sequence[str], slices: Slices) -> str:
    """`SELECT {select} {source}` (counts named `names`) in `slices.count` slices of `key`,
    summed: between its `bounds` when there are, else by its hash; the plain query for one
    slice or a key type not in `_HASH_OF_TYPE`. A NULL key falls in slice 0, so every row is
    in exactly one slice."""
    count = slices.count
    function = _HASH_OF_TYPE.get(slices.key_type or "")
    if count <= 1 or function is None:
        return f"SELECT {select} {source}"
    if len(slices.bounds) == count - 1 and slices.key_type in _BY_VALUE:
        where = _between_bounds(key, slices)
    else:
        hashed = f"coalesce({function}({key}, 0), 0)"
        where = [f"mod({hashed}, {count}) IN ({i}, {-i})" for i in range(count)]
    parts = " UNION ALL ".join(f"SELECT {select} {source} AND {w}" for w in where)
    sums = ", ".join(f"sum({name})::bigint AS {name}" for name in names)
    return f"SELECT {sums} FROM ({parts}) AS slices"


def _between_bounds(key: str, slices: Slices) -> list[str]:
    """Each slice's predicate: [bound i-1, bound i), NULL keys in the first."""
    parse = _BY_VALUE[str(slices.key_type)]
    edges = [f"'{parse(bound)}'::{slices.key_type}" for bound in slices.bounds]
    where = []
    for i in range(slices.count):
        sides = ([f"{key} >= {edges[i - 1]}"] if i > 0 else []) + (
            [f"{key} < {edges[i]}"] if i < len(edges) else []
        )
        where.append(" AND ".join(sides) if i else f"({sides[0]} OR {key} IS NULL)")
    return where


# Relations whose scans PostgreSQL can split among parallel workers: tables, partitioned
# tables, materialized views (a view's or a foreign table's may not be, and each slice would
# then read it whole, one after the other).
_SLICED_KINDS = frozenset({"r", "p", "m"})


async def slicing(ctx: Context[QualityCheck], checks: Sequence[QualityCheck]) -> Slices:
    """How the scan of `checks` (one scope) counts the distinct values of its key, the
    key column of `ctx.check`. One slice where the slices could not run side by side: a
    relation that is not a table, a `references` rule (its lookup of another table keeps the
    scan out of parallel workers), or no parallel workers for this session."""
    table = ctx.table(ctx.check.table)
    found = table.columns.get(ctx.check.rule.columns[0])
    key_type = None if found is None else found.type
    if (
        found is None
        or table.kind not in _SLICED_KINDS
        or key_type not in _HASH_OF_TYPE
        or any(c.rule.type == "references" for c in checks)
    ):
        return Slices(1, key_type)
    row = await ctx.conn.fetchrow(
        _SLICING_SQL, table.relation.schema, table.relation.name, found.name
    )
    assert row is not None
    count = SLICES if row["workers"] > 0 else 1
    return Slices(count, key_type, _bounds(row["histogram"], str(key_type), count))


# Whether this session may use parallel workers, and the key's histogram (the whole
# inheritance tree's where PostgreSQL keeps one: a partitioned table's).
_SLICING_SQL = """
SELECT current_setting('max_parallel_workers_per_gather')::int AS workers,
       (SELECT histogram_bounds::text FROM pg_stats
        WHERE schemaname = $1 AND tablename = $2 AND attname = $3
        ORDER BY inherited DESC LIMIT 1) AS histogram
"""


def _bounds(histogram: str | None, key_type: str, count: int) -> tuple[str, ...]:
    """Where `count` slices of a `_BY_VALUE` key split evenly by its histogram (equal-count
    buckets of a sample, as of the last ANALYZE): none without one, or for another type,
    so the slices split by hash. Stale statistics make the slices uneven, never wrong."""
    parse = _BY_VALUE.get(key_type)
    if parse is None or not histogram or count < 2:
        return ()
    values = histogram.strip("{}").split(",")
    if len(values) < count:
        return ()
    try:
        return tuple(str(parse(values[len(values) * i // count])) for i in range(1, count))
    except ValueError:
        return ()


@dataclass(frozen=True)
class Scanned:
    """What one shared scan found: an observation per quality check (None for a key whose
    count was given up, see `fused_probe`), and the counts each rider asked for."""

    observations: list[Observation | None]
    riders: list[list[int]]


async def fused_probe(
    ctx: Context[QualityCheck], checks: Sequence[QualityCheck], riders: Sequence[Riding] = ()
) -> Scanned:
    """Observations of `checks` (sharing ctx.check's scope) and the counts of `riders` from
    one scan. A key whose count of distinct values made the scan run past its timeout has
    no observation: the others are then answered by a scan without the keys, as they would
    have been without them."""
    indexes = {
        c.name: index
        for c in checks
        if c.rule.type == "unique" and (index := await unique_index(ctx.conn, c))
    }
    counted = [c for c in checks if c.rule.type == "unique" and c.name not in indexes]
    if not counted or len(counted) == len(checks):
        return await _scan(ctx, checks, indexes, riders)
    try:
        async with ctx.conn.transaction():  # a savepoint: a cancelled scan leaves the probe's
            return await _scan(ctx, checks, indexes, riders)  # transaction usable for the retry
    except asyncpg.QueryCanceledError:
        pass
    others = [c for c in checks if c not in counted]
    retried = await _scan(ctx, others, indexes, riders)
    found = dict(zip((c.name for c in others), retried.observations, strict=True))
    return Scanned([found.get(c.name) for c in checks], retried.riders)


async def _scan(
    ctx: Context[QualityCheck],
    checks: Sequence[QualityCheck],
    indexes: dict[str, str],
    riders: Sequence[Riding],
) -> Scanned:
    counted = [c for c in checks if c.rule.type == "unique" and c.name not in indexes]
    keys = {c.rule.columns[0] for c in counted}
    sliced = await slicing(replace(ctx, check=counted[0]), checks) if len(keys) == 1 else None
    found = fused_query(checks, ctx.now, frozenset(indexes), sliced, riders)
    row = await found.fetchrow(ctx.conn, ctx.table(ctx.check.table), zone(ctx.check.timezone))
    rows = int(row["rows_checked"] or 0)
    observations: list[Observation | None] = [
        Observation(rows, int(row[f"v{i}"] or 0), indexes.get(c.name)) for i, c in enumerate(checks)
    ]
    return Scanned(observations, [_rider_counts(row, i) for i in range(len(riders))])


def _rider_counts(row: asyncpg.Record, rider: int) -> list[int]:
    """The counts `fused_query` put in `row` for its `rider`-th rider, in order."""
    names = set(row.keys())
    counts: list[int] = []
    while (name := _rider_column(rider, len(counts))) in names:
        counts.append(int(row[name] or 0))
    return counts


async def run_shared(
    ctx: Context[QualityCheck], checks: Sequence[QualityCheck], riders: Sequence[Riding] = ()
) -> list[CheckResult]:
    """Results of `checks` (of one `fusion_key`) from one scan, in order, then those of the
    checks riding it (`riders`: a volume count of the same rows, ...)."""
    scanned = await fused_probe(ctx, checks, riders)
    results = [
        evaluate(check, observation, ctx.now, ctx.source)
        if observation is not None
        else CheckResult(
            check.name,
            CheckStatus.ERROR,
            None,
            "probe cancelled: counting the key's distinct values made the scan it shares run"
            f" longer than its timeout ({format_duration(ctx.timeout)})",
            ctx.now,
        )
        for check, observation in zip(checks, scanned.observations, strict=True)
    ]
    host: Context[Any] = ctx
    for riding, counts in zip(riders, scanned.riders, strict=True):
        results.append(await riding.ride.finish(replace(host, check=riding.check), counts))
    return results


def rule_text(rule: QualityRule) -> str:
    """What a violation is, for messages (names and config values only, never row content)."""
    if rule.type == "range":
        low = number(rule.min) if rule.min is not None else "-inf"
        high = number(rule.max) if rule.max is not None else "inf"
        return f"{rule.column} outside {low}..{high}"
    if rule.type == "not_null":
        return f"{rule.column} is null"
    if rule.type == "unique":
        return f"duplicate ({', '.join(rule.columns)})"
    if rule.type == "accepted":
        return f"{rule.column} not an accepted value"
    if rule.type == "references":
        return f"{rule.column} missing from {rule.ref_table}.{rule.ref_column}"
    if rule.type == "json_keys":
        return f"{rule.column} element without {rule.key!r}"
    return "custom rule"


def evaluate(
    check: QualityCheck, observation: Observation, now: datetime, source: str
) -> CheckResult:
    """Pure: the count (or share) against warn_over / fail_over."""
    scope = f" in the last {format_duration(check.window)}" if check.window else ""
    rows, bad = observation.rows_checked, observation.violations
    counts = {"rows_checked": rows, "violations": bad, "dimension": dimension(check.rule)}
    threshold = {
        "warn_over": check.warn_over,
        "fail_over": check.fail_over,
        "as_share": check.as_share,
    }
    if rows == 0 and (bad == 0 or check.as_share):
        return CheckResult(
            check.name,
            CheckStatus.NODATA,
            None,
            f"no rows to check in {check.table}{scope}",
            now,
            threshold=threshold,
            baseline=counts,
        )
    value = bad / rows if check.as_share else float(bad)
    status = CheckStatus.OK
    if check.fail_over is not None and value > check.fail_over:
        status = CheckStatus.FAIL
    elif value > check.warn_over:
        status = CheckStatus.WARN
    shown = f"{value:.2%} ({bad} of {rows} rows)" if check.as_share else f"{bad} of {rows} rows"
    limit = check.fail_over if status == CheckStatus.FAIL else check.warn_over
    limit_text = f"{limit:.2%}" if check.as_share and limit is not None else number(limit)
    message = f"{shown}: {rule_text(check.rule)}{scope}"
    if observation.guaranteed_by is not None:
        message += f" (guaranteed by unique index {observation.guaranteed_by})"
        counts["guaranteed_by"] = observation.guaranteed_by
    if status != CheckStatus.OK:
        message += f" (over the {status} limit {limit_text})"
    return CheckResult(
        check=check.name,
        status=status,
        value=value,
        message=message,
        observed_at=now,
        threshold=threshold,
        expected_low=0.0,
        expected_high=check.warn_over,
        baseline=counts,
        samples=(point(check.name, now, value, source),),
    )


async def run(ctx: Context[QualityCheck]) -> CheckResult:
    return evaluate(ctx.check, await probe(ctx), ctx.now, ctx.source)


def needs(check: QualityCheck) -> list[Need]:
    rule = check.rule
    found = [Need("table", check.table)]
    if check.time_column is not None:
        found.append(Need("time_column", check.table, check.time_column, TIME_TYPES, "a timestamp"))
    column_types: dict[str, tuple[frozenset[str] | None, str]] = {
        "range": (NUMERIC_TYPES, "a number"),
        "not_null": (None, ""),
        "accepted": (COMPARABLE_TYPES, "a number, text, boolean or uuid"),
        "references": (COMPARABLE_TYPES, "a number, text, boolean or uuid"),
        "json_keys": (JSON_TYPES, "json or jsonb"),
    }
    if rule.column is not None and rule.type in column_types:
        types, wanted = column_types[rule.type]
        found.append(Need("rule.column", check.table, rule.column, types, wanted))
    if rule.type == "unique":
        # A windowed key is looked up among all earlier rows: an index led by its first
        # column keeps that a lookup per new key, and with the time column second each
        # lookup is an index range that stops at the window's edge.
        for index, name in enumerate(rule.columns):
            lookup = index == 0 and check.window is not None
            hint = ""
            if lookup and check.time_column is not None:
                hint = (
                    f"CREATE INDEX ON {check.table.sql} ({col(name)}, {col(check.time_column)}),"
                    " which makes it an index lookup per new key"
                )
            found.append(
                Need(f"rule.columns[{index}]", check.table, name, indexed=lookup, index_hint=hint)
            )
    if rule.type == "references" and rule.ref_table and rule.ref_column:
        found.append(
            Need(
                "rule.ref_column",
                rule.ref_table,
                rule.ref_column,
                COMPARABLE_TYPES,
                "a number, text, boolean or uuid",
                relation_path="rule.ref_table",
            )
        )
    return found


def check_values(check: QualityCheck, catalog: Catalog) -> list[tuple[str, str]]:
    """Accepted values fit the column; referenced columns compare; unique keys are comparable."""
    rule = check.rule
    table = catalog.get(check.table)
    if table is None:
        return []
    problems: list[tuple[str, str]] = []
    if rule.type == "accepted" and rule.column in table.columns:
        try:
            python_value(list(rule.values), table.column(rule.column))
        except ValueError as exc:
            problems.append(("rule.values", str(exc)))
    if rule.type == "unique":
        for index, name in enumerate(rule.columns):
            column = table.columns.get(name)
            if column is not None and column.type == "json":
                problems.append(
                    (
                        f"rule.columns[{index}]",
                        f"column {name!r} is json, which has no equality; use jsonb",
                    )
                )
    if rule.type == "references" and rule.ref_table and rule.ref_column and rule.column:
        ref = catalog.get(rule.ref_table)
        mine = table.columns.get(rule.column)
        theirs = ref.columns.get(rule.ref_column) if ref else None
        if mine and theirs and not _comparable(mine.type, theirs.type):
            problems.append(
                (
                    "rule.ref_column",
                    f"{check.table}.{rule.column} ({mine.display}) cannot be compared with "
                    f"{rule.ref_table}.{rule.ref_column} ({theirs.display})",
                )
            )
    return problems


def _comparable(a: str, b: str) -> bool:
    return (
        a == b
        or (a in NUMERIC_TYPES and b in NUMERIC_TYPES)
        or (a in TEXT_TYPES and b in TEXT_TYPES)
    )


def sql(check: QualityCheck, config: Config) -> str:
    return query(check, datetime.now(UTC)).sql


KIND = KindSpec[QualityCheck](
    model=QualityCheck,
    needs=needs,
    sql=sql,
    target=lambda check: (
        f"{check.table}.{check.rule.column or ','.join(check.rule.columns) or '*'}"
    ),
    describe=lambda check: (
        check.description or f"rows of {check.table} where {rule_text(check.rule)}"
    ),
    run=run,
    check_values=check_values,
    share_key=fusion_key,
    run_shared=run_shared,
)
