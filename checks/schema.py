"""schema: the columns and types of watched tables against the last recorded shape.

Probe: one catalog query (pg_attribute, with typmods: varchar(50) -> varchar(100) is a change).
The shape is kept in the baseline of the check's own results, so it survives restarts and is
shared by every agent. The first run records it. A change is reported with `on_change` status,
listing added, removed and retyped columns, for as long as it is new: once the changed shape has
held for `accept_after` it becomes the recorded shape (ok again). A change that goes back is
forgotten; a further change starts the clock again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from pipectl import store
from pipectl.checks.base import Context, KindSpec, point
from pipectl.checks.catalog import Need
from pipectl.checks.sql import Params, Query
from pipectl.config import (
    CheckBase,
    Config,
    PositiveDuration,
    RelationName,
)
from pipectl.durations import format_duration
from pipectl.model import CheckResult, CheckStatus
from pipectl.store import BaselineRow


class SchemaCheck(CheckBase):
    kind: Literal["schema"]
    tables: list[RelationName] = Field(min_length=1)
    on_change: Literal["warn", "fail"] = "warn"
    accept_after: PositiveDuration = timedelta(days=1)


Shape = dict[str, dict[str, str] | None]
"""relation -> {column: type} in column order; None for a relation that no longer exists."""

_STATE_KEY = "accepted"


def query(check: SchemaCheck) -> Query:
    params = Params()
    schemas = params.add([t.schema for t in check.tables])
    names = params.add([t.name for t in check.tables])
    return Query(
        "SELECT w.schema, w.name, c.oid IS NOT NULL AS present, a.attname AS column,"
        " format_type(a.atttypid, a.atttypmod) AS type"
        f" FROM unnest({schemas}::text[], {names}::text[]) WITH ORDINALITY AS w(schema, name, ord)"
        " LEFT JOIN pg_namespace n ON n.nspname = w.schema"
        " LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY w.ord, a.attnum",
        params,
    )


async def probe(ctx: Context[SchemaCheck]) -> Shape:
    rows = await query(ctx.check).fetch(ctx.conn)
    shape: Shape = {}
    for row in rows:
        key = f"{row['schema']}.{row['name']}"
        if not row["present"]:
            shape[key] = None
            continue
        columns = shape.setdefault(key, {})
        if columns is not None and row["column"] is not None:
            columns[row["column"]] = row["type"]
    return shape


def differences(old: Shape, new: Shape) -> list[str]:
    """Readable changes from `old` to `new`, one per table and kind of change."""
    out: list[str] = []
    for table in sorted(set(old) | set(new)):
        before, after = old.get(table), new.get(table)
        if before == after:
            continue
        if after is None:
            out.append(f"{table}: table missing")
            continue
        if before is None:
            out.append(f"{table}: table appeared")
            continue
        added = [f"{c} {t}" for c, t in after.items() if c not in before]
        removed = [c for c in before if c not in after]
        retyped = [
            f"{c} {before[c]} -> {t}" for c, t in after.items() if c in before and before[c] != t
        ]
        parts = []
        if added:
            parts.append("added " + ", ".join(added))
        if removed:
            parts.append("removed " + ", ".join(removed))
        if retyped:
            parts.append("retyped " + ", ".join(retyped))
        out.append(f"{table}: " + "; ".join(parts))
    return out


def change_count(old: Shape, new: Shape) -> int:
    """Columns added, removed or retyped (a missing table counts each of its columns)."""
    total = 0
    for table in set(old) | set(new):
        before, after = old.get(table) or {}, new.get(table) or {}
        total += sum(1 for c in set(before) | set(after) if before.get(c) != after.get(c))
    return total


@dataclass(frozen=True)
class State:
    """What the check remembers between runs (stored as the result's baseline)."""

    accepted: Shape
    accepted_at: str
    pending: Shape | None = None
    pending_since: str | None = None

    @classmethod
    def from_baseline(cls, row: BaselineRow | None) -> State | None:
        if row is None:
            return None
        data = row.baseline
        return cls(
            data["accepted"],
            data.get("accepted_at") or row.observed_at.isoformat(),
            data.get("pending"),
            data.get("pending_since"),
        )

    def as_baseline(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "accepted_at": self.accepted_at,
            "pending": self.pending,
            "pending_since": self.pending_since,
        }


def evaluate(
    check: SchemaCheck, shape: Shape, state: State | None, now: datetime, source: str
) -> CheckResult:
    """Pure: compare with the recorded shape; record it on the first run."""
    tables = sum(1 for v in shape.values() if v is not None)
    columns = sum(len(v) for v in shape.values() if v is not None)
    summary = f"{tables} tables, {columns} columns"

    def done(status: CheckStatus, value: int, message: str, new_state: State) -> CheckResult:
        return CheckResult(
            check=check.name,
            status=status,
            value=float(value),
            message=message,
            observed_at=now,
            threshold={
                "on_change": check.on_change,
                "accept_after_s": check.accept_after.total_seconds(),
            },
            expected_low=0.0,
            expected_high=0.0,
            baseline=new_state.as_baseline(),
            samples=(point(check.name, now, value, source),),
        )

    if state is None:
        return done(
            CheckStatus.OK, 0, f"recorded the shape: {summary}", State(shape, now.isoformat())
        )
    changes = differences(state.accepted, shape)
    if not changes:
        return done(
            CheckStatus.OK, 0, f"unchanged: {summary}", State(state.accepted, state.accepted_at)
        )
    since = (
        state.pending_since if state.pending == shape and state.pending_since else now.isoformat()
    )
    held = now - datetime.fromisoformat(since)
    count = max(change_count(state.accepted, shape), 1)
    if held >= check.accept_after:
        return done(
            CheckStatus.OK,
            0,
            f"accepted the changed shape after {format_duration(check.accept_after)}: "
            + "; ".join(changes),
            State(shape, now.isoformat()),
        )
    return done(
        CheckStatus(check.on_change),
        count,
        "; ".join(changes)
        + f" (accepted as the new shape once unchanged for {format_duration(check.accept_after)})",
        State(state.accepted, state.accepted_at, shape, since),
    )


async def run(ctx: Context[SchemaCheck]) -> CheckResult:
    shape = await probe(ctx)
    state = State.from_baseline(await store.last_baseline(ctx.conn, ctx.check.name, _STATE_KEY))
    return evaluate(ctx.check, shape, state, ctx.now, ctx.source)


def needs(check: SchemaCheck) -> list[Need]:
    return [
        Need(f"tables[{i}]", table, relation_path=f"tables[{i}]")
        for i, table in enumerate(check.tables)
    ]


def sql(check: SchemaCheck, config: Config) -> str:
    return query(check).sql


KIND = KindSpec[SchemaCheck](
    model=SchemaCheck,
    needs=needs,
    sql=sql,
    target=lambda check: ", ".join(str(t) for t in check.tables),
    describe=lambda check: (
        check.description
        or f"columns and types of {len(check.tables)} tables against the recorded shape"
    ),
    run=run,
)
