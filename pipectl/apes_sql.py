"""The APES preset's SQL (sql/apes/): upstream schema, materialized summaries, indexes."""

from __future__ import annotations

from pipectl.migrate import statements
from pipectl.sqlfiles import sql_dir
from pipectl.store.base import Conn


def script(name: str) -> str:
    return (sql_dir() / "apes" / name).read_text(encoding="utf-8")


async def load_base(conn: Conn) -> None:
    """The APES tables and plain-view summaries as deployed upstream (an empty database)."""
    async with conn.transaction():
        await conn.execute(script("schema.sql"))


async def load_materialized(conn: Conn) -> None:
    """Materialized summaries with unique indexes, and grants for pipectl_agent."""
    async with conn.transaction():
        await conn.execute(script("materialized.sql"))


async def apply_indexes(conn: Conn) -> None:
    """CREATE INDEX CONCURRENTLY cannot run in a transaction: one statement at a time."""
    for statement in statements(script("indexes.sql")):
        await conn.execute(statement)
