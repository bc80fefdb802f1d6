"""The `lock` fault: a session that holds a lock on a summary in an open transaction.

On a table this is `LOCK TABLE ... IN EXCLUSIVE MODE`. PostgreSQL refuses LOCK TABLE on a
materialized view ("not supported for materialized views"), so there the session runs
`ANALYZE` inside its open transaction instead: that takes SHARE UPDATE EXCLUSIVE and keeps it
until the transaction ends. Either lock conflicts with the EXCLUSIVE lock that `REFRESH
MATERIALIZED VIEW CONCURRENTLY` needs (and with a plain REFRESH), while reads go on; a refresh
with a lock_timeout fails with lock_not_available (55P03).

If the server drops the session (a restart), the lock is taken again as soon as it can be,
for as long as the fault lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from pipectl.identifiers import Relation
from pipectl.resilience import Backoff, Outage
from pipectl.simulator.faults import FaultError

log = logging.getLogger(__name__)

Connect = Callable[[str, dict[str, str]], Awaitable[asyncpg.Connection]]
APPLICATION_NAME = "pipectl-simulator-lock"
_LOCKABLE = {"r": "table", "p": "partitioned table", "m": "materialized view"}


async def check_lockable(conn: asyncpg.Connection, relation: Relation) -> str:
    """The relation's kind ('r', 'p' or 'm'). It must exist and be a table or materialized
    view: locking a plain view would lock its base tables, which stops APES writing instead
    of blocking a refresh."""
    kind = await conn.fetchval(
        "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2",
        relation.schema,
        relation.name,
    )
    if kind is None:
        raise FaultError(f"lock: relation {relation} does not exist")
    if kind not in _LOCKABLE:
        raise FaultError(
            f"lock: {relation} is not a table or materialized view (relkind {kind!r}); "
            "nothing refreshes a plain view"
        )
    return str(kind)


class LockHolder:
    """Holds the lock from `start()` until `release()`."""

    def __init__(self, connect: Connect, relation: Relation) -> None:
        self._connect = connect
        self.relation = relation
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def _acquire(self) -> asyncpg.Connection:
        conn = await self._connect(
            APPLICATION_NAME, {"lock_timeout": "5s", "idle_in_transaction_session_timeout": "0"}
        )
        try:
            kind = await check_lockable(conn, self.relation)
            await conn.execute("BEGIN")
            if kind == "m":
                await conn.execute(f"ANALYZE {self.relation.sql}")
            else:
                await conn.execute(f"LOCK TABLE {self.relation.sql} IN EXCLUSIVE MODE")
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def start(self) -> None:
        """Take the lock now (errors propagate), then keep it in the background."""
        self._conn = await self._acquire()
        log.info("holding a lock on %s that blocks its refresh", self.relation)
        self._task = asyncio.create_task(self._keep(), name=f"lock {self.relation}")

    async def _keep(self) -> None:
        backoff = Backoff()
        outage = Outage(f"lock on {self.relation}", log)
        while True:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                try:
                    await asyncio.sleep(1.0)
                    await conn.execute("SELECT 1")
                    continue
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    outage.failed(exc)
                    conn.terminate()
                    self._conn = None
            try:
                self._conn = await self._acquire()
                outage.recovered()
                backoff.reset()
            except FaultError as exc:
                outage.failed(exc)
                await backoff.sleep()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                outage.failed(exc)
                await backoff.sleep()

    async def release(self) -> None:
        """Roll back (which releases the lock at once) and close the session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.execute("ROLLBACK"), 5)
            await asyncio.wait_for(conn.close(), 5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            conn.terminate()
        log.info("released lock on %s", self.relation)
