"""The console's link to PostgreSQL: a small pool for queries and one connection for LISTEN.

`supervise()` runs for the life of the app (in a worker): it connects, checks the schema and the
role's privilege, listens on pipectl's channels, and reports every change of the link as a
message. When the link is lost it closes everything and tries again with a growing backoff.
Nothing here touches a widget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from textual.message import Message

from pipectl.console.messages import Connection, ConnectionChanged, DatabaseChanged
from pipectl.db import ConnectConfig, DatabaseUnavailable, connect, create_pool, describe_target
from pipectl.listen import Listener
from pipectl.migrate import MigrationError, ensure_current
from pipectl.resilience import close_pool_quietly, close_quietly, describe, is_transient
from pipectl.store.base import Conn
from pipectl.store.console import can_file_requests

log = logging.getLogger(__name__)

T = TypeVar("T")
Post = Callable[[Message], object]

APPLICATION_NAME = "pipectl console"
# Short interactive reads: JIT compilation (triggered by misestimated jsonb plans) costs more
# than it saves.
SETTINGS = {"jit": "off"}
CHANNELS = ("pipectl_changes", "pipectl_requests")


class NotConnected(Exception):
    """The database is not reachable right now; the header already says so."""


class ConsoleService:
    """Owns the connections; everything else asks it for a query or listens to its messages."""

    def __init__(
        self,
        config: ConnectConfig,
        *,
        keepalive: float = 5.0,
        backoff: tuple[float, float] = (0.5, 15.0),
        schema_retry: float = 30.0,
    ) -> None:
        self.config = config
        self.keepalive = keepalive
        self.backoff = backoff
        self.schema_retry = schema_retry
        self.target = describe_target(config.database.dsn)
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._retry = asyncio.Event()
        self._post: Post = lambda message: None

    # ------------------------------------------------------------------ queries

    async def query(self, fetch: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `fetch` on a pooled connection. A lost link becomes NotConnected (and wakes the
        supervisor); any other database error propagates to the worker that asked."""
        pool = self._pool
        if pool is None or self._lost.is_set():
            raise NotConnected(self._lost_reason or "not connected")
        try:
            async with pool.acquire() as conn:
                return await fetch(conn)
        except Exception as exc:
            if is_transient(exc):
                self._mark_lost(f"{type(exc).__name__}: {exc}")
                raise NotConnected(str(exc) or type(exc).__name__) from exc
            raise

    def retry_now(self) -> None:
        """Skip the rest of the backoff (the operator asked for a refresh)."""
        self._retry.set()

    # ------------------------------------------------------------------ supervision

    async def supervise(self, post: Post) -> None:
        """Connect, listen, report; on loss close, wait (backoff) and start again. Never
        raises: every failure is a message for the header."""
        self._post = post
        delay = self.backoff[0]
        try:
            while True:
                post(ConnectionChanged(Connection("connecting", self.target)))
                try:
                    connection, listening = await self._open()
                except MigrationError as exc:
                    await self._close()
                    post(ConnectionChanged(Connection("schema", self.target, str(exc))))
                    await self._pause(self.schema_retry)
                    continue
                except Exception as exc:
                    await self._close()
                    post(
                        ConnectionChanged(
                            Connection("lost", self.target, _reason(exc), retry_in=delay)
                        )
                    )
                    await self._pause(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                delay = self.backoff[0]
                ended = await self._listen(connection, listening)
                reason = self._lost_reason or ended
                await self._close()
                post(ConnectionChanged(Connection("lost", self.target, reason, retry_in=delay)))
                await self._pause(delay)
        finally:
            await self._close()

    async def _open(self) -> tuple[Connection, asyncpg.Connection]:
        """The query pool, the schema and the role's privilege, and the listener's connection,
        opened at the same time as the pool (its subscriptions come next)."""
        self._lost.clear()
        self._lost_reason = ""
        listening = asyncio.ensure_future(connect(self.config, application_name=APPLICATION_NAME))
        try:
            self._pool = await create_pool(
                self.config,
                min_size=1,
                max_size=2,
                application_name=APPLICATION_NAME,
                settings=SETTINGS,
            )
            async with self._pool.acquire() as conn:
                await ensure_current(conn)
                can_write = await can_file_requests(conn)
                user = await conn.fetchval("SELECT session_user")
            listener_conn = await listening
        except BaseException:
            await _discard(listening)
            raise
        connection = Connection("connected", self.target, user=str(user), can_write=can_write)
        return connection, listener_conn

    async def _listen(self, connection: Connection, conn: asyncpg.Connection) -> str:
        """One LISTEN session (pipectl.listen) on `conn`: reports `connection` once
        subscribed; returns why it ended. A cheap keepalive notices a dead socket that no
        NOTIFY would reveal."""

        async def connected(_conn: object) -> None:
            self._post(ConnectionChanged(connection))

        async def opened() -> asyncpg.Connection:
            return conn

        self._listener = Listener(
            "console listener",
            opened,
            {channel: self._on_notify for channel in CHANNELS},
            on_connected=connected,
            keepalive=self.keepalive,
            logger=log,
        )
        try:
            ended = await self._listener.session()
        except Exception as exc:
            return _reason(exc)
        finally:
            self._listener = None
        return "connection lost" if ended == "interrupted" else ended

    async def _pause(self, seconds: float) -> None:
        self._retry.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry.wait(), seconds)

    async def _close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if listener is not None:
            listener.stop()
        if pool is not None:
            await close_pool_quietly(pool, 2)

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            if self._listener is not None:
                self._listener.interrupt()

    def _on_notify(self, channel: str, payload: str) -> None:
        data: dict[str, Any] = {}
        # Anyone may NOTIFY: a payload that is not JSON, or nested past the parser's
        # recursion limit, only means "something changed".
        with contextlib.suppress(ValueError, RecursionError):
            decoded = json.loads(payload)
            if isinstance(decoded, dict):
                data = decoded
            elif isinstance(decoded, int):
                data = {"id": decoded}
        table = "requests" if channel == "pipectl_requests" else str(data.get("table", ""))
        self._post(DatabaseChanged(table, data))


async def _discard(opening: asyncio.Future[asyncpg.Connection]) -> None:
    """Cancel a connection still being opened, or close it if it was."""
    if not opening.done():
        opening.cancel()
    with contextlib.suppress(BaseException):
        conn = await opening
        await close_quietly(conn)


def _reason(exc: BaseException) -> str:
    """One line an operator can act on; DatabaseUnavailable already is one."""
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        return f"database error: {describe(exc)}"
    if not is_transient(exc):
        log.warning("console: unexpected connection failure", exc_info=exc)
    return describe(exc)
