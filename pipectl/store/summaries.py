"""Refreshing a materialized summary as the agent's role may.

PostgreSQL 17+ grants REFRESH through the MAINTAIN privilege. Before 17 only the owner may
refresh, and an owner may also drop, alter or grant the view away: there the agent calls
pipectl.refresh_summary(), which refreshes the views listed in pipectl.refreshable and nothing
else. A session that may refresh directly (an owner, a superuser, MAINTAIN) does so."""

from __future__ import annotations

from pipectl.identifiers import Relation
from pipectl.store.base import Conn

_MAINTAIN_SINCE = 170000

_MAY_REFRESH = """
SELECT CASE WHEN current_setting('server_version_num')::int >= $3
            THEN has_table_privilege(c.oid, 'MAINTAIN')
            ELSE pg_has_role(c.relowner, 'USAGE') END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
"""


async def refresh_summary(
    conn: Conn, relation: Relation, concurrently: bool, within: float | None = None
) -> None:
    """REFRESH MATERIALIZED VIEW [CONCURRENTLY] `relation`, in the caller's transaction;
    `within` bounds the wait on the client (seconds)."""
    direct = await conn.fetchval(
        _MAY_REFRESH, relation.schema, relation.name, _MAINTAIN_SINCE, timeout=within
    )
    if direct is False and conn.get_server_version().major < 17:
        await conn.execute(
            "SELECT pipectl.refresh_summary($1, $2, $3)",
            relation.schema,
            relation.name,
            concurrently,
            timeout=within,
        )
        return
    # The name was checked against the catalog by the caller and is quoted here.
    prefix = (
        "REFRESH MATERIALIZED VIEW CONCURRENTLY" if concurrently else "REFRESH MATERIALIZED VIEW"
    )
    await conn.execute(f"{prefix} {relation.sql}", timeout=within)
