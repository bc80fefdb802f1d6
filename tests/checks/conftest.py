"""Fixtures for the checks engine: a connection with pipectl's codecs to a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from pipectl.db import connect
from tests.helpers import make_config

NOW = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)
"""A Wednesday noon: tests place rows relative to it and pass it as the engine's `now`."""


@pytest.fixture
async def conn(database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(make_config(database))
    try:
        yield connection
    finally:
        await connection.close()
