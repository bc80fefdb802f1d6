"""Living with a database that goes away: which errors to retry, how to describe them without
leaking row values, how long to wait, and how to say so without flooding the log.

One classification for the agent, the console, the CLI, the checks and the simulator.
"""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg

from pipectl.clock import SYSTEM_CLOCK, Clock

# SQLSTATEs worth retrying: the server went away or is starting/stopping, a lock could not
# be had in time, or the transaction lost a serialization race.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
        "08000",  # connection exceptions ...
        "08001",
        "08003",
        "08004",
        "08006",
    }
)

# SQLSTATE classes whose primary message names objects, settings or resources, never row
# values: connection, feature, integrity (values are in DETAIL, which is never shown),
# transaction state, authorization, schema and syntax, resources, limits, object state,
# intervention, system. Data exceptions (22) quote the offending value; raised exceptions
# (P0) say whatever a function put in them: those are named, not quoted.
SAFE_MESSAGE_CLASSES = frozenset(
    {"08", "0A", "23", "25", "28", "3D", "3F", "40", "42", "53", "54", "55", "57", "58"}
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def is_connection_loss(exc: BaseException) -> bool:
    """The session is gone or unusable (the server went away, the socket broke, a client-side
    timeout fired): only a new connection helps."""
    for one in _chain(exc):
        if isinstance(one, asyncpg.PostgresError):
            if sqlstate(one).startswith(("08", "57P0")):
                return True
            continue
        if isinstance(one, asyncpg.InterfaceError) and (
            "closed" in str(one) or "released back to the pool" in str(one)
        ):
            return True
        if isinstance(
            one,
            asyncpg.InternalClientError
            | asyncpg.ConnectionDoesNotExistError
            | OSError
            | TimeoutError,
        ):
            # InternalClientError: a pooled connection the server terminated while idle is
            # left mid-protocol ("another operation is in progress"); the pool replaces it.
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Connection loss, lock timeout, serialization or deadlock: safe to try again at once
    (after a backoff). The whole exception chain counts: a server shutdown inside a
    transaction surfaces as "the underlying connection is closed", its cause chained."""
    if is_connection_loss(exc):
        return True
    return any(
        isinstance(one, asyncpg.PostgresError) and sqlstate(one) in TRANSIENT_SQLSTATES
        for one in _chain(exc)
    )


def safe_message(exc: asyncpg.PostgresError) -> str | None:
    """The first line of a server error's message when its class never quotes row values
    (SAFE_MESSAGE_CLASSES); None for the others, and for an empty message."""
    if (sqlstate(exc) or "?????")[:2] not in SAFE_MESSAGE_CLASSES:
        return None
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else "")
    lines = str(message).strip().splitlines()
    return lines[0] if lines and lines[0] else None


def describe_error(exc: asyncpg.PostgresError) -> str:
    """A server error in one line that quotes no row values: `Name [SQLSTATE]: message` for
    classes whose message is safe to show, `Name [SQLSTATE]` for the others."""
    head = f"{type(exc).__name__} [{sqlstate(exc) or '?????'}]"
    first = safe_message(exc)
    return f"{head}: {first}" if first else head


def describe(exc: BaseException) -> str:
    """Any failure in one line: server errors as describe_error(), others by class and the
    first line of their message."""
    if isinstance(exc, asyncpg.PostgresError):
        return describe_error(exc)
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Backoff:
    """Exponential delays with jitter, capped: `first`, 2x, 4x ... up to `cap`, each spread
    over [delay/2, delay] (so that many clients retrying together drift apart)."""

    def __init__(self, first: float = 0.25, cap: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.first = first
        self.cap = cap
        self.clock = clock
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        value = random.uniform(self._next / 2, self._next)
        self._next = min(self.cap, self._next * 2)
        return value

    async def sleep(self) -> float:
        delay = self.delay()
        await self.clock.sleep(delay)
        return delay


def backoff_delay(first: float, cap: float, attempt: int) -> float:
    """The delay before retry number `attempt` (1-based) of a Backoff(first, cap)."""
    return random.uniform(*_bounds(first, cap, attempt))


def _bounds(first: float, cap: float, attempt: int) -> tuple[float, float]:
    delay = min(cap, first * (2 ** max(0, min(attempt - 1, 60))))
    return delay / 2, delay


class Outage:
    """One condition that can fail over and over (a loop's database, a listener, claiming
    ticks): logs the first failure, a reminder every `every` seconds with the count, and the
    recovery. A server restart costs three log lines, not one per attempt."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        every: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        *,
        down: str = "{what} failed ({error}); retrying",
        up: str = "{what} recovered after {seconds:.1f}s ({attempts} failed attempts)",
    ) -> None:
        self.what = what
        self.log = logger
        self.every = every
        self.clock = clock
        self.down = down
        self.up = up
        self.since: float | None = None
        self.attempts = 0
        self._last_log = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        now = self.clock.monotonic()
        self.attempts += 1
        if self.since is None:
            self.since = now
            self._last_log = now
            self.log.warning(self.down.format(what=self.what, error=describe(exc)))
        elif now - self._last_log >= self.every:
            self._last_log = now
            self.log.warning(
                "%s still failing after %.0fs, %d attempts (%s)",
                self.what,
                now - self.since,
                self.attempts,
                describe(exc),
            )

    def recovered(self) -> bool:
        """Log the recovery if there was an outage; whether there was one."""
        if self.since is None:
            return False
        self.log.info(
            self.up.format(
                what=self.what,
                seconds=self.clock.monotonic() - self.since,
                attempts=self.attempts,
            )
        )
        self.since = None
        self.attempts = 0
        return True


class Throttle:
    """A warning that input from outside can repeat at will: logged at most once per `every`
    seconds per key, with the number of repeats it stood for."""

    def __init__(
        self, logger: logging.Logger, every: float = 60.0, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log `message % args` unless `key` was logged less than `every` seconds ago;
        whether it was logged."""
        now = self.clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        repeats = self._suppressed.pop(key, 0)
        extra = f" (and {repeats} more since the last report)" if repeats else ""
        self.log.warning(message + extra, *args)
        self._last[key] = now
        return True


async def close_quietly(conn: asyncpg.Connection, within: float = 2.0) -> None:
    """Close a connection without waiting on a dead server and without raising."""
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), within)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise


async def close_pool_quietly(pool: asyncpg.Pool, within: float = 3.0) -> None:
    """Close a pool gracefully if it can be done within `within` seconds, else terminate it."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except Exception:
        pool.terminate()
    except asyncio.CancelledError:
        pool.terminate()
        raise
