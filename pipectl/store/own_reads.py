"""pipectl's own buffer lookups (`pipectl.own_reads`), so the buffer-cache check can leave
them out of the ratio it judges.

A session's statistics are counted per relation while its transaction runs and reach
`pg_stat_database` / `pg_statio_*` only after it ends; within the transaction,
`pg_stat_get_xact_blocks_fetched(oid)` / `_hit(oid)` read those pending counts. Read before
and after a refresh or a probe (in the same transaction), their difference is exactly what
that work looked up, relation by relation (pg_stat_database's blks_hit and blks_read are the
sums of the same relation counts). The database-wide counter of the cache check subtracts
every relation; a watched table's counter subtracts that table's heap. Parallel workers
keep statistics of their own, out of the session's sight: bracketed work runs without them
(`measure_own_reads`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pipectl.store.base import DB, Conn, instants

DATABASE_KEY = "database"
"""The cache check's key of the database-wide counter: every relation's own reads count."""

_BATCH = 5000

# Relations with pending lookups in this session, as pg_statio names them (schema.name).
_PENDING_SQL = """
SELECT n.nspname || '.' || c.relname AS relation,
       pg_stat_get_xact_blocks_fetched(c.oid) AS fetched,
       pg_stat_get_xact_blocks_hit(c.oid) AS hit
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE pg_stat_get_xact_blocks_fetched(c.oid) > 0
"""

Reads = dict[str, tuple[int, int]]
"""relation -> (blocks fetched, of which found in shared buffers)."""


async def measure_own_reads(conn: Conn) -> None:
    """Keep this transaction's reads in this session: parallel workers count theirs in
    their own statistics, which `pending_reads` cannot see, so the bracketed work runs
    without them (SET LOCAL: until the transaction ends)."""
    await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")


async def pending_reads(conn: Conn) -> Reads:
    """The session's lookups not yet flushed to the shared statistics, per relation. Only
    meaningful as the difference of two calls within one transaction (`reads_between`)."""
    rows = await conn.fetch(_PENDING_SQL)
    return {r["relation"]: (int(r["fetched"]), int(r["hit"])) for r in rows}


def reads_between(before: Reads, after: Reads) -> Reads:
    """What was looked up between two `pending_reads` of one transaction (nonzero only)."""
    found: Reads = {}
    for relation, (fetched, hit) in after.items():
        was_fetched, was_hit = before.get(relation, (0, 0))
        delta = (max(fetched - was_fetched, 0), max(hit - was_hit, 0))
        if delta[0] > 0:
            found[relation] = (delta[0], min(delta[1], delta[0]))
    return found


async def record_own_reads(db: DB, what: str, reads: Reads) -> None:
    """One row per relation that `what` ('check NAME', 'step NAME') looked up."""
    if not reads:
        return
    relations = list(reads)
    await db.execute(
        "INSERT INTO pipectl.own_reads (relation, fetched, hit, what)"
        " SELECT r, f, h, $4 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(r, f, h)",
        relations,
        [reads[r][0] for r in relations],
        [reads[r][1] for r in relations],
        what,
    )


async def own_reads_between(db: DB, since: dict[str, datetime], until: datetime) -> Reads:
    """pipectl's own lookups recorded after `since[key]` up to `until`, per counter key:
    `DATABASE_KEY` sums every relation, any other key is a relation (schema.name)."""
    if not since:
        return {}
    keys = list(since)
    rows = await db.fetch(
        """
        SELECT k.key, coalesce(sum(o.fetched), 0) AS fetched, coalesce(sum(o.hit), 0) AS hit
        FROM unnest($1::text[], $2::text[]::timestamptz[]) AS k(key, since)
        LEFT JOIN pipectl.own_reads o
          ON o.at > k.since AND o.at <= $3 AND (k.key = $4 OR o.relation = k.key)
        GROUP BY k.key
        """,
        keys,
        instants(since[k] for k in keys),
        until,
        DATABASE_KEY,
    )
    return {r["key"]: (int(r["fetched"]), int(r["hit"])) for r in rows}


async def prune_own_reads(db: DB, age: timedelta, max_batches: int = 100) -> int:
    """Delete own reads older than `age` (pipectl.prune_own_reads keeps at least an hour)."""
    total = 0
    for _ in range(max_batches):
        count: int = await db.fetchval("SELECT pipectl.prune_own_reads($1, $2)", age, _BATCH)
        total += count
        if count < _BATCH:
            break
    return total
