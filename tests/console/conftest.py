"""Console tests drive the real app (Pilot) against a real database: the seeded incident, or a
real in-process agent that carries the operator's requests out."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from rich.console import Console
from textual.message import Message
from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from pipectl.console.app import PipectlApp, utc_now
from pipectl.console.service import ConsoleService
from tests.console.seed import NOW, seed
from tests.helpers import make_config


@pytest.fixture
async def incident(database: str) -> str:
    """A fresh database holding the seeded incident (see seed.py)."""
    conn = await asyncpg.connect(database)
    try:
        await seed(conn)
    finally:
        await conn.close()
    return database


def console_app(dsn: str, *, read_only: bool = False, fixed_clock: bool = True) -> PipectlApp:
    """The real app, clock pinned to the incident's NOW, no cursor blink, quick reconnects."""
    config = make_config(dsn)
    service = ConsoleService(config, keepalive=1.0, backoff=(0.2, 1.0))
    return PipectlApp(
        config,
        read_only=read_only,
        clock=(lambda: NOW) if fixed_clock else utc_now,
        cursor_blink=False,
        service=service,
    )


class Recorder:
    """Collects the messages the app processes (`run_test(message_hook=...)`)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]


async def settle(pilot: Pilot[Any], until: Callable[[], Any], limit: float = 20.0) -> Any:
    """Let workers and messages run until `until()` is truthy. `limit` only guards against a
    hang; nothing here asserts on time."""
    app = pilot.app
    deadline = time.monotonic() + limit
    while True:
        result = until()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never held: {until}")
        busy = [w for w in app.workers if w.group not in ("connection",) and not w.is_finished]
        if busy:
            # A worker replaced by a newer one of its group (exclusive) ends cancelled: it is
            # done all the same, and the newer one is waited for on the next round.
            with contextlib.suppress(WorkerCancelled):
                await app.workers.wait_for_complete(busy)
        await pilot.pause(0.02)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    yield conn
    await conn.close()


def plain(widget: Any, width: int = 200) -> str:
    """What a Static shows, as plain text (Text, Table, Syntax alike)."""
    content = widget.content
    if isinstance(content, str):
        return content
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(content)
    return console.export_text()
