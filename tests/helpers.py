"""Small helpers shared by tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import pipectl.checks  # noqa: F401  (registers the check kinds, so test configs parse)
from pipectl import apes_sql, migrate
from pipectl.config import Config, LoadedConfig, parse_config_text

T = TypeVar("T")


def dsn_for(dsn: str, database: str) -> str:
    """The same server and user, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def load_schemas(dsn: str) -> None:
    """Into an empty database: the APES schema, pipectl's schema and the materialized
    summaries, as the session's template database has them."""
    conn = await asyncpg.connect(dsn)
    try:
        await apes_sql.load_base(conn)
        await migrate.upgrade(conn)
        await apes_sql.load_materialized(conn)
    finally:
        await conn.close()


def make_config(dsn: str | None, redis_url: str | None = None, body: str = "") -> Config:
    return make_loaded(dsn, redis_url, body).config


def make_loaded(dsn: str | None, redis_url: str | None = None, body: str = "") -> LoadedConfig:
    """A validated config from TOML text, with the test's servers filled in."""
    head = "[database]\n"
    if dsn:
        head += f'dsn = "{dsn}"\n'
    head += 'connect_timeout = "5s"\n'
    if redis_url:
        head += f'[redis]\nurl = "{redis_url}"\n'
    body = textwrap.dedent(body)
    # Agents under test serve metrics on a free port, never the default one.
    if "[agent]" not in body:
        head += '[agent]\nmetrics_address = "127.0.0.1:0"\n'
    elif "metrics_address" not in body:
        body = body.replace("[agent]\n", '[agent]\nmetrics_address = "127.0.0.1:0"\n', 1)
    return parse_config_text(head + body, "test.toml", environ={})


async def wait_for(
    probe: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
