"""What the database says about the tables and columns the checks name.

Config names are validated here before any of them reaches a probe: the relation exists, the
column exists and has a type the check can use. Values that are compared with a column (filters,
accepted values) are converted to that column's Python type here too, so a wrong value is a
config problem at start-up rather than a failed probe later.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from pipectl.identifiers import Relation
from pipectl.store.base import Conn

TIME_TYPES = frozenset({"timestamp", "timestamptz"})
INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
FLOAT_TYPES = frozenset({"float4", "float8"})
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES | {"numeric"}
TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "citext"})
JSON_TYPES = frozenset({"json", "jsonb"})
COMPARABLE_TYPES = NUMERIC_TYPES | TEXT_TYPES | {"bool", "uuid"}
_UTC = ZoneInfo("UTC")
READABLE_KINDS = frozenset({"r", "p", "v", "m", "f"})
STATS_KINDS = frozenset({"r", "p", "m"})
"""Relations with buffer statistics (a partitioned table through its partitions)."""

_KIND_NAMES = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "f": "foreign table",
    "S": "sequence",
    "i": "index",
    "c": "composite type",
    "t": "TOAST table",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    """pg_type.typname (the base type for a domain), e.g. 'int4', 'timestamptz'."""
    display: str
    """format_type(), e.g. 'integer', 'timestamp without time zone'."""
    indexed: bool
    """Leading column of at least one index: max() and range counts can use it."""


@dataclass(frozen=True)
class Table:
    relation: Relation
    kind: str
    columns: dict[str, Column] = field(default_factory=dict)

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES.get(self.kind, "relation")

    def column(self, name: str) -> Column:
        return self.columns[name]


@dataclass(frozen=True)
class Catalog:
    """The catalog entries of the relations some checks name (missing ones are absent)."""

    tables: dict[Relation, Table] = field(default_factory=dict)

    def get(self, relation: Relation) -> Table | None:
        return self.tables.get(relation)

    def table(self, relation: Relation) -> Table:
        return self.tables[relation]

    def merged(self, other: Catalog) -> Catalog:
        return Catalog({**self.tables, **other.tables})


_CATALOG_SQL = """
SELECT w.schema, w.name, c.relkind::text AS kind, a.attname AS column,
       coalesce(nullif(bt.typname, ''), t.typname) AS type,
       format_type(a.atttypid, NULL) AS display,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum)
           AS indexed
FROM unnest($1::text[], $2::text[]) AS w(schema, name)
JOIN pg_namespace n ON n.nspname = w.schema
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.name
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
ORDER BY w.schema, w.name, a.attnum
"""


async def load_catalog(conn: Conn, relations: Iterable[Relation]) -> Catalog:
    """One catalog query for every relation named; names are compared, never parsed by SQL."""
    wanted = sorted(set(relations))
    if not wanted:
        return Catalog()
    rows = await conn.fetch(_CATALOG_SQL, [r.schema for r in wanted], [r.name for r in wanted])
    columns: dict[Relation, dict[str, Column]] = {}
    kinds: dict[Relation, str] = {}
    for row in rows:
        relation = Relation(row["schema"], row["name"])
        kinds[relation] = row["kind"]
        found = columns.setdefault(relation, {})
        if row["column"] is not None:
            found[row["column"]] = Column(
                row["column"], row["type"], row["display"], row["indexed"]
            )
    return Catalog({rel: Table(rel, kinds[rel], columns[rel]) for rel in kinds})


@dataclass(frozen=True)
class Need:
    """A relation (and maybe a column of it) that a check uses, and what it must be."""

    path: str
    """Key under the check naming the column, e.g. 'column' or 'rule.ref_column'."""
    relation: Relation
    column: str | None = None
    types: frozenset[str] | None = None
    """Acceptable pg_type names; None accepts any type."""
    wanted: str = ""
    """What the types mean to a person, e.g. 'a timestamp'."""
    kinds: frozenset[str] = READABLE_KINDS
    relation_path: str = "table"
    """Key under the check naming the relation, e.g. 'table' or 'rule.ref_table'."""
    indexed: bool = False
    """The probe relies on an index on this column to avoid reading the whole table."""
    index_hint: str = ""
    """The index to suggest when none leads with the column (default: one on the column)."""


def problems_for(needs: Sequence[Need], catalog: Catalog) -> list[tuple[str, str]]:
    """(path, message) for every need the catalog does not satisfy; one per missing relation."""
    problems: list[tuple[str, str]] = []
    bad_relations: set[Relation] = set()
    for need in needs:
        if need.relation in bad_relations:
            continue
        table = catalog.get(need.relation)
        if table is None:
            bad_relations.add(need.relation)
            problems.append(
                (need.relation_path, f"{need.relation} does not exist (or is not visible)")
            )
            continue
        if table.kind not in need.kinds:
            bad_relations.add(need.relation)
            allowed = " or ".join(sorted({_KIND_NAMES[k] for k in need.kinds}))
            problems.append(
                (
                    need.relation_path,
                    f"{need.relation} is a {table.kind_name}; expected a {allowed}",
                )
            )
            continue
        if need.column is not None:
            message = _column_problem(need, table)
            if message:
                problems.append((need.path, message))
    return problems


def _column_problem(need: Need, table: Table) -> str | None:
    assert need.column is not None
    column = table.columns.get(need.column)
    if column is None:
        hint = difflib.get_close_matches(need.column, list(table.columns), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"column {need.column!r} does not exist in {need.relation}{suggestion}"
    if need.types is not None and column.type not in need.types:
        wanted = need.wanted or ", ".join(sorted(need.types))
        return f"column {need.relation}.{need.column} is {column.display}; expected {wanted}"
    return None


def python_value(value: Any, column: Column, tz: ZoneInfo = _UTC) -> Any:
    """Convert a config value (or a time) to what asyncpg sends for `column`'s type.

    Raises ValueError with a message for a person when the value does not fit the column.
    """
    if isinstance(value, list | tuple):
        return [python_value(item, column, tz) for item in value]
    if isinstance(value, datetime):
        if column.type not in TIME_TYPES:
            raise ValueError(f"column {column.name!r} is {column.display}, not a timestamp")
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        # A timestamp without time zone holds wall-clock time in the configured zone.
        return aware if column.type == "timestamptz" else aware.astimezone(tz).replace(tzinfo=None)
    kind = column.type
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"column {column.name!r} is boolean: use true or false")
        return value
    if isinstance(value, bool):
        raise ValueError(f"column {column.name!r} is {column.display}, not boolean")
    if kind in INTEGER_TYPES:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise ValueError(f"column {column.name!r} is {column.display}: use a whole number")
    if kind in FLOAT_TYPES or kind == "numeric":
        if not isinstance(value, int | float):
            raise ValueError(f"column {column.name!r} is {column.display}: use a number")
        return Decimal(str(value)) if kind == "numeric" else float(value)
    if kind in TEXT_TYPES:
        if not isinstance(value, str):
            raise ValueError(f"column {column.name!r} is {column.display}: use text in quotes")
        return value
    if kind == "uuid":
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise ValueError(f"column {column.name!r} is uuid: use a UUID in quotes") from None
    raise ValueError(
        f"comparing column {column.name!r} ({column.display}) with a value is not supported"
    )
