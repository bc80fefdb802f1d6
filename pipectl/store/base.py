"""Shared typing for store functions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run queries and transactions.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy
DB: TypeAlias = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


def instants(values: Iterable[datetime]) -> list[str]:
    """Datetimes as ISO 8601 text with their offset, for a `$n::text[]::timestamptz[]`
    parameter: asyncpg has no built-in codec for timestamptz[] and looks its type up in the
    catalog once per connection (three queries, ~5 ms: a check's history read paid it on
    every `pipectl check`), while text[] it encodes at once. Exact to the microsecond; a
    naive datetime is taken as UTC, as asyncpg takes it for a timestamptz."""
    return [(v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat() for v in values]
