"""Writes to the pipectl schema that must not be lost: retried through database outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, TypeVar

import asyncpg

from pipectl.db import is_transient

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Bookkeeper:
    """Runs store functions on the agent's pool, waiting out transient failures.

    A run's outcome is the record operators trust; when PostgreSQL restarts we wait for it
    rather than drop the write. `give_up_at` (monotonic) bounds the wait during shutdown.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.give_up_at: float | None = None
        self.healthy = asyncio.Event()
        self.healthy.set()

    async def __call__(
        self,
        fn: Callable[Concatenate[asyncpg.Pool, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        delay = 0.2
        while True:
            try:
                result = await fn(self.pool, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or self._past_deadline():
                    raise
                self.healthy.clear()
                log.warning(
                    "database unavailable, retrying %s in %.1fs: %s",
                    getattr(fn, "__name__", "write"),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.healthy.set()
            return result

    def _past_deadline(self) -> bool:
        return self.give_up_at is not None and time.monotonic() >= self.give_up_at
