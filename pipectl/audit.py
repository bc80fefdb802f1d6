"""Audit a step: its published content against a full recompute of its defining query.

Both directions with `EXCEPT ALL` (a row the summary has twice and the recompute once is a
difference), floats (float4, float8, numeric) rounded to 9 significant digits on both sides
(then a leftover row whose floats are one unit from its counterpart's in the 9th digit is
paired with it: see `comparison_sql`), json compared as jsonb. One statement computes both
sides, the differences, their counts and a few example rows, so the two sides are read in one
snapshot.

What "the defining query" is depends on the step's kind:

- `matview`: the materialized view's own definition (`pg_get_viewdef`), evaluated now. A
  materialized view holds its definition as of its last refresh, so it differs from a
  recompute whenever rows it reads arrived (or changed, or left its window) since: the audit
  says when pipectl last refreshed it, and a difference there is staleness, not a wrong
  summary. Audit right after a refresh to compare like with like.
- `incremental`: the engine's `defining_query(step)` evaluated at the reference time of the
  content it published (`published_at`): the recompute stands exactly where the summary does,
  so any difference is a wrong summary.

`sql` steps have no defining query, and a plain view is its definition: neither can be
audited. The audit only reads: run it in a read-only transaction with a statement_timeout
(`audit_transaction`); the CLI and the `audit` check kind both do.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from pipectl import store
from pipectl.config import StepConfig
from pipectl.db import decode_json
from pipectl.durations import format_duration
from pipectl.identifiers import Relation, quote_ident
from pipectl.incremental import config_of, defining_query
from pipectl.resilience import describe_error
from pipectl.store import incremental as incremental_store
from pipectl.store.base import Conn

SIGNIFICANT_DIGITS = 9
"""Floats are compared after rounding to this many significant digits (both sides)."""
FLOAT_ZERO = "1e-12"
"""Float magnitudes below this compare as 0 (see `normalized`)."""
EXAMPLES = 3
"""Example rows kept per direction."""
AUDITABLE = ("matview", "incremental")

_FLOAT_TYPES = frozenset({"real", "double precision", "numeric"})
_JSON_TYPES = frozenset({"json"})


class AuditError(Exception):
    """An audit that could not be done: the step cannot be audited, the summary is missing or
    not populated, a privilege is missing, the recompute ran out of time. The message says
    which and what to do."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """format_type() of the column, e.g. 'double precision', 'character varying(50)'."""

    @property
    def base_type(self) -> str:
        return self.type.split("(", 1)[0]

    @property
    def rounded(self) -> bool:
        return self.base_type in _FLOAT_TYPES


@dataclass(frozen=True)
class Recompute:
    """The full recompute of a step's defining query."""

    sql: str
    """A SELECT returning the summary's columns."""
    args: tuple[Any, ...]
    reference_at: datetime | None
    """The time the query's `now()` stands for; None: the statement's own now()."""
    published_at: datetime | None
    """When the summary's current content was produced (incremental: its reference time;
    matview: pipectl's last successful refresh), when known."""


@dataclass(frozen=True)
class Audit:
    """What one audit found."""

    step: str
    kind: str
    relation: str
    audited_at: datetime
    """The database's now() when the audit ran."""
    reference_at: datetime
    """The time the recompute's now() stood for."""
    published_at: datetime | None
    summary_rows: int
    recompute_rows: int
    only_in_summary: int
    only_in_recompute: int
    examples_summary: tuple[dict[str, Any], ...]
    examples_recompute: tuple[dict[str, Any], ...]
    columns: tuple[str, ...]
    rounded: tuple[str, ...]
    """Columns compared at SIGNIFICANT_DIGITS significant digits."""
    type_mismatches: tuple[tuple[str, str, str], ...] = ()
    """(column, summary type, recompute type) where the two sides' types differ."""
    elapsed_ms: float = 0.0
    newer_rows: int | None = None
    """Incremental: source rows whose time is at or after the reference time (arrived after
    the refresh, or dated ahead): a recompute counts them, the summary cannot yet."""
    basis: Literal["published", "state"] = "published"
    """What the summary side is: the published table ("published"), or, for an incremental
    step, the summary its next refresh would publish now, read in the recompute's snapshot
    ("state": exact however the source is written meanwhile)."""

    @property
    def differing(self) -> int:
        """Rows in one side and not the other, both directions."""
        return self.only_in_summary + self.only_in_recompute

    @property
    def equal(self) -> bool:
        return self.differing == 0 and not self.type_mismatches

    @property
    def stale_for(self) -> timedelta | None:
        """How long ago a matview's content was produced (None: not a matview, or unknown)."""
        if self.kind != "matview" or self.published_at is None:
            return None
        return max(self.audited_at - self.published_at, timedelta(0))

    def verdict(self) -> str:
        """One line: equal, or how many rows differ each way."""
        if self.equal:
            return (
                f"{self.step}: equal: {_rows(self.summary_rows)}, the same as a full recompute"
                f" of its defining query (floats to {SIGNIFICANT_DIGITS} significant digits)"
            )
        parts = [
            f"{_rows(self.only_in_summary)} only in the summary",
            f"{_rows(self.only_in_recompute)} only in the recompute",
        ]
        text = (
            f"{self.step}: differs: {', '.join(parts)} (summary {_rows(self.summary_rows)},"
            f" recompute {_rows(self.recompute_rows)})"
        )
        if self.type_mismatches:
            text += "; column types differ: " + ", ".join(
                f"{name} {mine} vs {theirs}" for name, mine, theirs in self.type_mismatches
            )
        return text

    def explanation(self) -> str:
        """What the comparison stood on, and for a matview what a difference means."""
        if self.basis == "state":
            return (
                f"the summary as its next refresh would publish it at {_when(self.reference_at)}"
                " (its kept buckets, the rows since its last refresh, the window's edge)"
                " against a full recompute at that time, both read in one snapshot: rows"
                " written meanwhile cannot make them differ"
            )
        if self.kind == "incremental":
            text = (
                f"recomputed at the summary's reference time {_when(self.reference_at)}"
                " (the time its published content stands for)"
            )
            if self.newer_rows:
                text += (
                    f"; {_rows(self.newer_rows)} of its source are at or after that time:"
                    " rows that arrived after the refresh count in the recompute, not yet in"
                    " the summary (the next refresh adds them)"
                )
                if not self.equal:
                    text += "; rerun the step and audit right after to compare like with like"
            return text
        when = (
            f"pipectl last refreshed it at {_when(self.published_at)}"
            f" ({format_duration(self.stale_for or timedelta(0))} before this audit)"
            if self.published_at is not None
            else "pipectl has no successful refresh of it on record"
        )
        text = f"recomputed now ({_when(self.reference_at)}); {when}"
        if not self.equal:
            text += (
                ". A materialized view holds its definition as of its last refresh: rows that"
                " arrived, changed or left its window since make a recompute differ. That is"
                " staleness, not a wrong summary; rerun the step and audit again right after"
                " to compare like with like"
            )
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kind": self.kind,
            "relation": self.relation,
            "equal": self.equal,
            "differing_rows": self.differing,
            "only_in_summary": self.only_in_summary,
            "only_in_recompute": self.only_in_recompute,
            "summary_rows": self.summary_rows,
            "recompute_rows": self.recompute_rows,
            "audited_at": self.audited_at,
            "reference_at": self.reference_at,
            "published_at": self.published_at,
            "stale_for_seconds": (
                self.stale_for.total_seconds() if self.stale_for is not None else None
            ),
            "columns": list(self.columns),
            "rounded_columns": list(self.rounded),
            "significant_digits": SIGNIFICANT_DIGITS,
            "type_mismatches": [
                {"column": name, "summary": mine, "recompute": theirs}
                for name, mine, theirs in self.type_mismatches
            ],
            "examples_only_in_summary": list(self.examples_summary),
            "examples_only_in_recompute": list(self.examples_recompute),
            "newer_source_rows": self.newer_rows,
            "basis": self.basis,
            "explanation": self.explanation(),
            "elapsed_ms": self.elapsed_ms,
        }


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def auditable(step: StepConfig) -> str | None:
    """Why `step` cannot be audited (None: it can)."""
    if step.kind in AUDITABLE:
        return None
    if step.kind == "view":
        return (
            f"step {step.name} watches a plain view, which is its definition on every read:"
            " there is nothing to audit"
        )
    return (
        f"step {step.name} is an {step.kind} step: it has no defining query to recompute;"
        f" audit works on {' and '.join(AUDITABLE)} steps"
    )


@asynccontextmanager
async def audit_transaction(conn: Conn, limit: timedelta) -> AsyncIterator[None]:
    """Read-only and REPEATABLE READ (every read of the audit sees one snapshot), with a
    statement_timeout that ends with the transaction."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        milliseconds = max(int(limit.total_seconds() * 1000), 1)
        await conn.execute(f"SET LOCAL statement_timeout = {milliseconds}")
        yield


async def audit_step(
    conn: Conn,
    step: StepConfig,
    *,
    timezone: str = "UTC",
    limit: timedelta | None = None,
    basis: Literal["published", "state"] = "published",
) -> Audit:
    """Compare `step`'s published content with a full recompute of its defining query.
    Runs in the caller's transaction (see `audit_transaction`) under `timezone`, the agent's:
    a summary's window compares a `timestamp` column with now(), which its refreshes did in
    the agent's TimeZone. Raises AuditError for an audit that cannot be done, with the
    reason. `limit` (the statement_timeout set) only words a cancelled statement.
    `basis="state"` (incremental steps) compares what the next refresh would publish now
    instead of the published table: see `Audit.basis`."""
    reason = auditable(step)
    if reason is not None:
        raise AuditError(reason)
    if basis == "state" and step.kind != "incremental":
        raise AuditError(
            f"step {step.name} is a {step.kind} step: only an incremental step keeps a state"
            " to audit against a recompute in one snapshot"
        )
    assert step.relation is not None  # matview and incremental steps name their relation
    try:
        await conn.execute("SELECT set_config('TimeZone', $1, true)", timezone)
        if basis == "state":
            return await _audit_state(conn, step, step.relation)
        return await _audit(conn, step, step.relation)
    except asyncpg.QueryCanceledError:
        within = f" ({format_duration(limit)})" if limit is not None else ""
        raise AuditError(
            f"the audit of {step.name} ran longer than its statement_timeout{within}: a full"
            " recompute reads every row of the summary's window; give it more time"
        ) from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise AuditError(
            f"{describe_error(exc)}: the audit reads {step.relation} and every table its"
            " definition reads, as the user you connect as; grant it SELECT on them"
            ' (docs/operating.md, "Audit")'
        ) from None
    except asyncpg.ObjectNotInPrerequisiteStateError as exc:
        raise AuditError(
            f"{step.relation} cannot be read yet ({describe_error(exc)}): refresh it once"
            f" (pipectl rerun {step.name}), then audit"
        ) from None
    except asyncpg.UndefinedFunctionError as exc:
        raise AuditError(
            f"cannot compare {step.relation} with its recompute: {describe_error(exc)}"
        ) from None


async def _audit(conn: Conn, step: StepConfig, relation: Relation) -> Audit:
    columns = await summary_columns(conn, relation)
    if not columns:
        raise AuditError(f"{relation} does not exist (or you may not see it)")
    for _attempt in range(3):
        recompute = await recompute_of(conn, step, relation)
        theirs = await _result_columns(conn, recompute)
        mine = {c.name: c for c in columns}
        missing = [c.name for c in columns if c.name not in theirs]
        extra = [name for name in theirs if name not in mine]
        if missing or extra:
            raise AuditError(
                f"the recompute of {step.name} does not return the summary's columns:"
                + (f" missing {', '.join(missing)}" if missing else "")
                + (";" if missing and extra else "")
                + (f" extra {', '.join(extra)}" if extra else "")
            )
        mismatches = tuple(
            (c.name, c.type, theirs[c.name])
            for c in columns
            if _comparable_type(c.type) != _comparable_type(theirs[c.name])
        )
        began = time.perf_counter()
        found = await conn.fetchrow(
            comparison_sql(relation, recompute.sql, columns), *recompute.args
        )
        elapsed = (time.perf_counter() - began) * 1000
        assert found is not None
        # A content published between reading its reference time and reading it (possible
        # outside REPEATABLE READ) would pair one content with another's time: read again.
        if step.kind != "incremental":
            break
        if await incremental_store.published_at(conn, step) == recompute.published_at:
            break
    else:
        raise AuditError(f"{step.name} kept publishing while it was audited; try again")
    audited_at: datetime = found["audited_at"]
    return _compared(
        step,
        relation,
        columns,
        found,
        elapsed,
        reference_at=recompute.reference_at or audited_at,
        published_at=recompute.published_at,
        type_mismatches=mismatches,
        newer_rows=await _newer_rows(conn, step, recompute.reference_at),
    )


def _compared(
    step: StepConfig,
    relation: Relation,
    columns: Sequence[Column],
    found: asyncpg.Record,
    elapsed_ms: float,
    **rest: Any,
) -> Audit:
    """An Audit from the comparison's row (`comparison_sql`) and what it stood on (`rest`)."""
    return Audit(
        step=step.name,
        kind=step.kind,
        relation=str(relation),
        audited_at=found["audited_at"],
        summary_rows=found["summary_rows"],
        recompute_rows=found["recompute_rows"],
        only_in_summary=found["only_in_summary"],
        only_in_recompute=found["only_in_recompute"],
        examples_summary=_rows_of(found["examples_summary"]),
        examples_recompute=_rows_of(found["examples_recompute"]),
        columns=tuple(c.name for c in columns),
        rounded=tuple(c.name for c in columns if c.rounded),
        elapsed_ms=round(elapsed_ms, 3),
        **rest,
    )


async def _audit_state(conn: Conn, step: StepConfig, relation: Relation) -> Audit:
    columns = await summary_columns(conn, relation)
    if not columns:
        raise AuditError(f"{relation} does not exist (or you may not see it)")
    try:
        summary = await incremental_store.replay_sql(conn, step)
    except incremental_store.IncrementalError as exc:
        raise AuditError(str(exc)) from None
    recompute = defining_query(step, reference="now()")
    began = time.perf_counter()
    found = await conn.fetchrow(
        comparison_sql(relation, recompute, columns, summary=summary), step.name
    )
    elapsed = (time.perf_counter() - began) * 1000
    assert found is not None
    return _compared(
        step,
        relation,
        columns,
        found,
        elapsed,
        reference_at=found["audited_at"],
        published_at=await incremental_store.published_at(conn, step),
        basis="state",
    )


async def _newer_rows(conn: Conn, step: StepConfig, reference: datetime | None) -> int | None:
    """Incremental: source rows at or after the reference time (an index range on the time
    column, which the engine needs anyway)."""
    if step.kind != "incremental" or reference is None:
        return None
    inc = config_of(step)
    count: int = await conn.fetchval(
        f"SELECT count(*) FROM {inc.source.sql}"
        f" WHERE {quote_ident(inc.time_column)} >= $1::timestamptz",
        reference,
    )
    return count


def _rows_of(examples: Any) -> tuple[dict[str, Any], ...]:
    """Example rows from jsonb, whether or not the connection decodes json (pipectl.db's do)."""
    if isinstance(examples, str):
        examples = decode_json(examples)
    return tuple(row for row in examples if isinstance(row, dict))


def _comparable_type(type_name: str) -> str:
    """Types that compare the same once normalized count as equal: every float is rounded to
    numeric, and a length modifier (varchar(50) vs varchar) changes no value."""
    base = type_name.split("(", 1)[0]
    return "numeric" if base in _FLOAT_TYPES else base


async def summary_columns(conn: Conn, relation: Relation) -> list[Column]:
    """The relation's columns in order, with their types; empty when it does not exist."""
    rows = await conn.fetch(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        relation.sql,
    )
    return [Column(r["attname"], r["type"]) for r in rows]


async def _result_columns(conn: Conn, recompute: Recompute) -> dict[str, str]:
    """The recompute's result columns and their types, from its prepared statement (nothing
    is executed)."""
    statement = await conn.prepare(recompute.sql)
    types = await conn.fetch(
        "SELECT t.oid, format_type(t.oid, NULL) AS type FROM pg_type t WHERE t.oid = ANY($1)",
        [a.type.oid for a in statement.get_attributes()],
    )
    names = {r["oid"]: r["type"] for r in types}
    return {a.name: names.get(a.type.oid, a.type.name) for a in statement.get_attributes()}


async def recompute_of(conn: Conn, step: StepConfig, relation: Relation) -> Recompute:
    """The defining query of `step`, ready to run (see the module's docstring)."""
    if step.kind == "matview":
        return await _matview_recompute(conn, step, relation)
    if step.kind == "incremental":
        return await _incremental_recompute(conn, step)
    raise AuditError(auditable(step) or f"cannot audit a {step.kind} step")


async def _matview_recompute(conn: Conn, step: StepConfig, relation: Relation) -> Recompute:
    row = await conn.fetchrow(
        """
        SELECT c.relkind::text AS relkind, pg_get_viewdef(c.oid) AS definition
        FROM pg_class c WHERE c.oid = to_regclass($1)
        """,
        relation.sql,
    )
    if row is None:
        raise AuditError(f"{relation} does not exist (or you may not see it)")
    if row["relkind"] != "m":
        raise AuditError(
            f"{relation} is not a materialized view (relkind {row['relkind']!r}): step"
            f" {step.name} refreshes nothing the audit could compare"
        )
    definition = str(row["definition"]).strip().rstrip(";").strip()
    refreshed = await store.last_success(conn, step.name)
    return Recompute(definition, (), None, refreshed)


async def _incremental_recompute(conn: Conn, step: StepConfig) -> Recompute:
    published = await incremental_store.published_at(conn, step)
    if published is None:
        raise AuditError(
            f"{step.name} has published nothing yet: install it (pipectl db incremental"
            f" {step.name}), then audit"
        )
    return Recompute(defining_query(step), (published,), published, published)


def normalized(column: Column, source: str) -> str:
    """`source.column` as compared: floats rounded to SIGNIFICANT_DIGITS significant digits
    (as numeric, so both sides' float types meet), json as jsonb (json has no equality)."""
    value = f"{source}.{quote_ident(column.name)}"
    if column.rounded:
        number = f"({value})::numeric"
        digits = SIGNIFICANT_DIGITS - 1
        # Below FLOAT_ZERO counts as 0: the stddev of equal values is exactly 0 from the
        # incremental state's numeric sums and ~1e-17 from float8 arithmetic (and the other
        # way round), which no number of significant digits would make equal.
        return (
            f"CASE WHEN {number} IS NULL OR {number} = 0"
            f" OR {number} IN ('NaN', 'Infinity', '-Infinity') THEN {number}"
            f" WHEN abs({number}) < {FLOAT_ZERO} THEN 0"
            f" ELSE round({number}, {digits} - floor(log(abs({number})))::int) END"
        )
    if column.base_type in _JSON_TYPES:
        return f"({value})::jsonb"
    return value


def comparison_sql(
    relation: Relation, recompute: str, columns: Sequence[Column], *, summary: str | None = None
) -> str:
    """One statement: both sides normalized, both differences, their counts, the first
    EXAMPLES rows of each difference (as jsonb objects). `summary`: the summary side's SQL
    (the relation's content by default).

    Rounding alone would cry wolf: two values a few ulps apart that straddle a rounding
    boundary (0.4999999995 computed two ways) round to neighbours. So the rows `EXCEPT ALL`
    leaves on each side are paired once more, by their exact columns (then in order of their
    floats), and a pair whose floats are all `_near` each other is no difference."""
    source = relation.sql if summary is None else f"({summary})"
    summary_columns = ", ".join(f"{normalized(c, 's')} AS {quote_ident(c.name)}" for c in columns)
    recomputed = ", ".join(f"{normalized(c, 'q')} AS {quote_ident(c.name)}" for c in columns)
    names = ", ".join(quote_ident(c.name) for c in columns)
    order = ", ".join(str(i + 1) for i in range(len(columns)))
    row, rank = (quote_ident(n) for n in _fresh_names(columns, "audit_row", "audit_rank"))
    return f"""
        WITH summary AS MATERIALIZED (
            SELECT {summary_columns} FROM {source} AS s
        ),
        recompute AS MATERIALIZED (
            SELECT {recomputed} FROM (
{recompute}
            ) AS q
        ),
        summary_left AS MATERIALIZED (
            SELECT *, {_pairing(columns, row, rank)} FROM (
                SELECT * FROM summary EXCEPT ALL SELECT * FROM recompute) AS d
        ),
        recompute_left AS MATERIALIZED (
            SELECT *, {_pairing(columns, row, rank)} FROM (
                SELECT * FROM recompute EXCEPT ALL SELECT * FROM summary) AS d
        ),
        near_pairs AS MATERIALIZED (
            SELECT a.{row} AS summary_row, b.{row} AS recompute_row
            FROM summary_left AS a JOIN recompute_left AS b ON {_paired(columns, rank)}
        ),
        only_summary AS MATERIALIZED (
            SELECT {names} FROM summary_left
            WHERE {row} NOT IN (SELECT summary_row FROM near_pairs)
        ),
        only_recompute AS MATERIALIZED (
            SELECT {names} FROM recompute_left
            WHERE {row} NOT IN (SELECT recompute_row FROM near_pairs)
        )
        SELECT
            (SELECT count(*) FROM summary) AS summary_rows,
            (SELECT count(*) FROM recompute) AS recompute_rows,
            (SELECT count(*) FROM only_summary) AS only_in_summary,
            (SELECT count(*) FROM only_recompute) AS only_in_recompute,
            (SELECT coalesce(jsonb_agg(to_jsonb(e)), '[]') FROM (
                SELECT * FROM only_summary ORDER BY {order} LIMIT {EXAMPLES}) AS e
            ) AS examples_summary,
            (SELECT coalesce(jsonb_agg(to_jsonb(e)), '[]') FROM (
                SELECT * FROM only_recompute ORDER BY {order} LIMIT {EXAMPLES}) AS e
            ) AS examples_recompute,
            now() AS audited_at
    """


def _fresh_names(columns: Sequence[Column], *wanted: str) -> list[str]:
    """`wanted` names the comparison adds to a side's rows, made unlike any column's name."""
    taken = {c.name for c in columns}
    fresh = []
    for name in wanted:
        while name in taken:
            name = f"_{name}"
        taken.add(name)
        fresh.append(name)
    return fresh


def _pairing(columns: Sequence[Column], row: str, rank: str) -> str:
    """A leftover row's identity (`row`) and its rank among the leftovers with the same exact
    columns, in order of its floats (`rank`): rows of the two sides pair on (exact, rank)."""
    everything = ", ".join(quote_ident(c.name) for c in columns)
    exact = ", ".join(quote_ident(c.name) for c in columns if not c.rounded)
    floats = ", ".join(quote_ident(c.name) for c in columns if c.rounded) or "1"
    partition = f"PARTITION BY {exact} " if exact else ""
    return (
        f"row_number() OVER (ORDER BY {everything}) AS {row},"
        f" row_number() OVER ({partition}ORDER BY {floats}) AS {rank}"
    )


def _paired(columns: Sequence[Column], rank: str) -> str:
    """Two leftover rows are the same row: same exact columns, same rank, every float near."""
    conditions = [f"a.{rank} = b.{rank}"]
    for column in columns:
        a, b = f"a.{quote_ident(column.name)}", f"b.{quote_ident(column.name)}"
        if column.rounded:
            conditions.append(f"({_near(a, b)})")
        else:
            conditions.append(f"{a} IS NOT DISTINCT FROM {b}")
    return " AND ".join(conditions)


def _near(a: str, b: str) -> str:
    """SQL: two rounded floats (see `normalized`) are the same value: equal (or both NULL),
    or finite and at most one unit apart in the SIGNIFICANT_DIGITS-th digit of the larger (a
    value computed two ways rounded either side of a boundary), or both within FLOAT_ZERO of
    0 (one rounded to 0, the other just above the threshold)."""
    special = "('NaN', 'Infinity', '-Infinity')"
    unit = f"10::numeric ^ (floor(log(greatest(abs({a}), abs({b})))) - {SIGNIFICANT_DIGITS - 1})"
    # CASE, not OR: only it fixes the order, and log() must not see a 0, NULL or NaN.
    return (
        f"CASE WHEN {a} IS NOT DISTINCT FROM {b} THEN true"
        f" WHEN {a} IS NULL OR {b} IS NULL OR {a} IN {special} OR {b} IN {special} THEN false"
        f" ELSE abs({a} - {b}) <= greatest({FLOAT_ZERO}::numeric, {unit}) END"
    )


def example_text(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """An example row as `column=value, ...` in the summary's column order (values as JSON
    would write them; callers show it through pipectl.safetext)."""
    import json

    parts = []
    for name in columns:
        value = row.get(name)
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


__all__ = [
    "AUDITABLE",
    "EXAMPLES",
    "SIGNIFICANT_DIGITS",
    "Audit",
    "AuditError",
    "Column",
    "Recompute",
    "audit_step",
    "audit_transaction",
    "auditable",
    "comparison_sql",
    "example_text",
    "normalized",
    "recompute_of",
    "summary_columns",
]
