"""One LISTEN connection kept alive: connect, subscribe, keepalive, reconnect with backoff, stop.

Used by the agent (requests and run changes), the console (every change) and the simulator
(faults sent from another process). A NOTIFY carries no guarantee: whoever listens also looks
again after every (re)connection (`on_connected`), since notifications sent while no one was
listening are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import asyncpg

from pipectl.clock import SYSTEM_CLOCK, Clock
from pipectl.resilience import Backoff, Outage, close_quietly, describe

log = logging.getLogger(__name__)

NotifyHandler = Callable[[str, str], None]
"""Called with (channel, payload) for each notification, on the event loop."""


class Listener:
    """Keeps one connection LISTENing on `channels` until `stop()`.

    `connect` opens the connection (it raises on failure); `on_connected(conn)` runs after the
    subscriptions are in place (look for work missed while away, take per-session locks);
    `on_lost(reason)` after the connection was lost. A keepalive (`SELECT 1` every
    `keepalive` seconds, bounded by `keepalive_timeout`, the same time unless given) notices a
    dead socket that no NOTIFY would reveal. The owner's own statements on the connection go
    through `exclusive()`, taking turns with the keepalive. Failures are logged through one
    Outage: a long outage costs three lines."""

    def __init__(
        self,
        what: str,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channels: Mapping[str, NotifyHandler],
        *,
        on_connected: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        on_lost: Callable[[str], None] | None = None,
        keepalive: float = 5.0,
        keepalive_timeout: float | None = None,
        backoff: Backoff | None = None,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = log,
    ) -> None:
        self.what = what
        self._connect = connect
        self.channels = dict(channels)
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout or keepalive
        self.clock = clock
        self.backoff = backoff or Backoff(0.5, 10.0, clock=clock)
        self.outage = Outage(what, logger, clock=clock)
        self.connection: asyncpg.Connection | None = None
        # asyncpg refuses a second operation on a connection while one is in progress: the
        # keepalive and an owner's statement on the listening connection take turns.
        self._statements = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._lost = asyncio.Event()
        self._retry = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self.connection is not None and not self._lost.is_set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[asyncpg.Connection | None]:
        """The listening connection (None between sessions), for statements of its owner's
        (a lock held for the session's life) that must not collide with the keepalive."""
        async with self._statements:
            yield self.connection

    def stop(self) -> None:
        self._stopping.set()
        self._lost.set()

    def retry_now(self) -> None:
        """Skip the rest of the current backoff."""
        self._retry.set()

    def interrupt(self) -> None:
        """End the current session (its owner found the connection unusable); `run()`
        reconnects, `session()` returns."""
        self._lost.set()

    async def run(self) -> None:
        """Until stop(): one connected session after another, backing off between them."""
        while not self._stopping.is_set():
            try:
                reason = await self.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.outage.failed(exc)
                if self._on_lost is not None:
                    self._on_lost(describe(exc))
            else:
                if self._stopping.is_set():
                    return
                log.info("%s: connection lost (%s); reconnecting", self.what, reason)
                if self._on_lost is not None:
                    self._on_lost(reason)
                self.backoff.reset()
            self._retry.clear()
            await _first_of(self.clock, self.backoff.delay(), self._stopping, self._retry)

    async def session(self) -> str:
        """One connection's life: connect, subscribe, keep alive. Returns why it ended;
        raises if it could not be set up."""
        self._lost.clear()
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._terminated)
            for channel, handler in self.channels.items():
                await conn.add_listener(channel, _adapter(handler))
            self.connection = conn
            if self._on_connected is not None:
                await self._on_connected(conn)
            self.outage.recovered()
            self.backoff.reset()
            return await self._keep_alive(conn)
        finally:
            self.connection = None
            with contextlib.suppress(Exception):
                conn.remove_termination_listener(self._terminated)
            await close_quietly(conn)

    async def _keep_alive(self, conn: asyncpg.Connection) -> str:
        while not self._lost.is_set():
            if await self.clock.wait(self._lost, self.keepalive):
                break
            try:
                await self._ping(conn)
            except Exception as exc:
                return describe(exc)
        if self._stopping.is_set():
            return "stopped"
        return "interrupted" if not conn.is_closed() else "the server closed the connection"

    async def _ping(self, conn: asyncpg.Connection) -> None:
        """SELECT 1, bounded; waiting for the owner's statement to end is not (each owner
        bounds its own)."""
        async with self._statements:
            await asyncio.wait_for(conn.execute("SELECT 1"), self.keepalive_timeout)

    def _terminated(self, _conn: object) -> None:
        self._lost.set()


def _adapter(handler: NotifyHandler) -> Callable[[object, int, str, object], None]:
    def on_notify(_conn: object, _pid: int, channel: str, payload: object) -> None:
        handler(channel, payload if isinstance(payload, str) else "")

    return on_notify


async def _first_of(clock: Clock, seconds: float, *events: asyncio.Event) -> None:
    """Wait until any of `events` is set, at most `seconds` (on `clock`)."""
    if any(event.is_set() for event in events):
        return
    any_set = asyncio.Event()
    waiters = [asyncio.ensure_future(_relay(event, any_set)) for event in events]
    try:
        await clock.wait(any_set, seconds)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
