"""The LISTEN connection's keepalive and its owner's own statements on it (the agent's liveness
lock) take turns: asyncpg refuses a second operation on a connection while one is in progress."""

from __future__ import annotations

import asyncio

import asyncpg

from pipectl.listen import Listener


async def test_the_owners_statements_and_the_keepalive_take_turns(database: str) -> None:
    """A keepalive every 10 ms beside 20 statements of the owner's, each 20 ms long: none
    collides (before, one of them failed with "another operation is in progress" and either
    the owner's statement raised or the session ended; CI saw an agent's rejoin fail so)."""
    connected = asyncio.Event()

    async def on_connected(_conn: asyncpg.Connection) -> None:
        connected.set()

    listener = Listener(
        "test listener",
        lambda: asyncpg.connect(database),
        {},
        on_connected=on_connected,
        keepalive=0.01,
        keepalive_timeout=30,  # a slow SELECT 1 on a loaded machine is not what is tested
    )
    session = asyncio.create_task(listener.session())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        for _ in range(20):
            async with listener.exclusive() as conn:
                assert conn is not None
                await conn.execute("SELECT pg_sleep(0.02)")
            await asyncio.sleep(0.005)
        assert listener.listening and not session.done()
    finally:
        listener.stop()
        ended = await asyncio.wait_for(session, 10)
    assert ended == "stopped"


async def test_exclusive_gives_none_between_sessions() -> None:
    listener = Listener("test listener", lambda: asyncpg.connect("postgresql://unused/x"), {})
    async with listener.exclusive() as conn:
        assert conn is None
