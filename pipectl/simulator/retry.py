"""Backing off while a server is away, and saying so once instead of every attempt."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import asyncpg


class Backoff:
    """Exponential delays with jitter: 0.25 s, 0.5 s, 1 s ... up to `cap`."""

    def __init__(self, first: float = 0.25, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        value = self._next * random.uniform(0.8, 1.2)
        self._next = min(self.cap, self._next * 2)
        return value

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay())


def describe(exc: BaseException) -> str:
    """One line: the exception's class and first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def is_connection_error(exc: BaseException) -> bool:
    """The session is gone or unusable: reconnect instead of carrying on."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state.startswith(("08", "57P"))
    # InternalClientError: a session the server ended mid-protocol is left "with another
    # operation in progress"; only a new connection helps.
    return isinstance(
        exc, asyncpg.InterfaceError | asyncpg.InternalClientError | OSError | TimeoutError
    )


class Outage:
    """Logs the first failure of a component, a reminder every `every` seconds, and the
    recovery, so a server restart costs three log lines, not one per attempt."""

    def __init__(self, what: str, logger: logging.Logger, every: float = 60.0) -> None:
        self.what = what
        self.log = logger
        self.every = every
        self.since: float | None = None
        self.attempts = 0
        self._last_log = 0.0

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.attempts += 1
        if self.since is None:
            self.since = now
            self._last_log = now
            self.log.warning("%s failed (%s); retrying with backoff", self.what, describe(exc))
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
        """Log the recovery if there was an outage; True if there was one."""
        if self.since is None:
            return False
        self.log.info(
            "%s recovered after %.1fs (%d failed attempts)",
            self.what,
            time.monotonic() - self.since,
            self.attempts,
        )
        self.since = None
        self.attempts = 0
        return True
