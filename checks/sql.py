"""Building probe SQL: quoted identifiers in the text, every value a bound parameter.

The SQL text of a probe does not depend on the catalog (it is published for the console before
any database is asked). Values bound "as a column" are converted to that column's type when the
query runs: a time becomes wall-clock time for a `timestamp without time zone` column, a filter
value becomes an int for an integer column, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg

from pipectl.checks.catalog import Table, python_value
from pipectl.config import ColumnName, Strict
from pipectl.identifiers import quote_ident
from pipectl.store.base import Conn


class Filter(Strict):
    """A bound predicate on one column: `column op value`, the value sent as a parameter."""

    column: ColumnName
    op: Literal["=", "!=", "<", "<=", ">", ">=", "is_null", "not_null", "in"]
    value: float | int | str | bool | list[float | int | str] | None = None


_UTC = ZoneInfo("UTC")
_OPERATORS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass
class Params:
    """Positional parameters, remembering which ones take a column's type."""

    items: list[tuple[Any, str | None]] = field(default_factory=list)

    def add(self, value: Any, *, as_column: str | None = None) -> str:
        self.items.append((value, as_column))
        return f"${len(self.items)}"

    def values(self, table: Table | None, tz: ZoneInfo = _UTC) -> list[Any]:
        out: list[Any] = []
        for value, column in self.items:
            if column is not None and table is not None:
                out.append(python_value(value, table.column(column), tz))
            else:
                out.append(value)
        return out


@dataclass(frozen=True)
class Query:
    """SQL text plus its parameters; `args` converts them for the table the probe reads."""

    sql: str
    params: Params

    def args(self, table: Table | None = None, tz: ZoneInfo = _UTC) -> list[Any]:
        return self.params.values(table, tz)

    async def fetchrow(
        self, conn: Conn, table: Table | None = None, tz: ZoneInfo = _UTC
    ) -> asyncpg.Record:
        # Not conn.fetchrow: it asks for one row (an Execute message with a row limit), and
        # PostgreSQL then plans without parallel workers; a scan of 1M rows took twice as
        # long (bench/FINDINGS.md). An aggregate returns one row whatever is asked.
        rows = await conn.fetch(self.sql, *self.args(table, tz))
        assert len(rows) == 1  # every probe is an aggregate: always one row
        return rows[0]

    async def fetch(
        self, conn: Conn, table: Table | None = None, tz: ZoneInfo = _UTC
    ) -> list[asyncpg.Record]:
        return list(await conn.fetch(self.sql, *self.args(table, tz)))


def col(name: str) -> str:
    return quote_ident(name)


def window_predicate(column: str, params: Params, low: Any, high: Any) -> str:
    """`column` in (low, high]: windows that tile time without overlap or gap."""
    quoted = col(column)
    return (
        f"{quoted} > {params.add(low, as_column=column)}"
        f" AND {quoted} <= {params.add(high, as_column=column)}"
    )


def filter_predicate(item: Filter, params: Params) -> str:
    """One `where`/`share_of` filter; the operator comes from a fixed map, the value is bound."""
    quoted = col(item.column)
    if item.op == "is_null":
        return f"{quoted} IS NULL"
    if item.op == "not_null":
        return f"{quoted} IS NOT NULL"
    if item.op == "in":
        return f"{quoted} = ANY({params.add(item.value, as_column=item.column)})"
    return f"{quoted} {_OPERATORS[item.op]} {params.add(item.value, as_column=item.column)}"


def conjunction(parts: Sequence[str]) -> str:
    """Predicates joined with AND; TRUE when there are none."""
    return " AND ".join(f"({p})" for p in parts) if parts else "TRUE"
