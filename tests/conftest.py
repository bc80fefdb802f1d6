"""Real servers for every test: embedded PostgreSQL 18 and Valkey 9 by default, or the servers
named by PIPECTL_TEST_DSN / PIPECTL_TEST_REDIS_URL. Each test gets its own database, cloned
from a template that already holds the APES schema and pipectl's migrations."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis

import pipectl.checks  # noqa: F401  (registers the check kinds before any test parses a config)
from pipectl.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.helpers import dsn_for, load_schemas

TEST_DSN = os.environ.get("PIPECTL_TEST_DSN")
TEST_REDIS_URL = os.environ.get("PIPECTL_TEST_REDIS_URL")


# Every fixture that reaches the session's servers (the embedded ones, or those named by
# PIPECTL_TEST_DSN / PIPECTL_TEST_REDIS_URL) depends on one of these.
_SERVER_FIXTURES = frozenset({"pg_server", "redis_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the session's servers, so that a second pass against other
    servers (.ci/run's PostgreSQL 15 / Redis 7 pass) can select exactly those with
    `-m shared_servers`: the others start servers of their own or none, and would only
    repeat the first pass."""
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_servers)


@pytest.fixture(scope="session")
def _cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def _pin_environment(monkeypatch: pytest.MonkeyPatch, _cache_home: Path) -> None:
    """What varies between machines stays out of the tests: zone, config search, colours,
    and the cache of valid configs (pipectl.configcache), kept in the session's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(_cache_home))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for var in ("PIPECTL_CONFIG", "PIPECTL_DATABASE_URL", "PIPECTL_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@dataclass(frozen=True)
class PgServer:
    dsn: str
    embedded: EmbeddedPostgres | None
    version: int


@contextlib.contextmanager
def _private_dir(prefix: str) -> Iterator[Path]:
    """A directory outside pytest's numbered tmp dirs: a concurrent pytest session prunes
    those it considers old, which would pull the data out from under a running server."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if TEST_DSN:
        yield PgServer(TEST_DSN, None, _server_version(TEST_DSN))
        return
    with _private_dir("pipectl-test-pg-") as directory:
        server = EmbeddedPostgres(directory, fast=True)
        server.start()
        try:
            yield PgServer(server.dsn(), server, _server_version(server.dsn()))
        finally:
            server.stop()


def _server_version(dsn: str) -> int:
    import asyncio

    async def fetch() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    return asyncio.run(fetch())


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if TEST_REDIS_URL:
        yield TEST_REDIS_URL
        return
    with _private_dir("pipectl-test-valkey-") as directory:
        server = EmbeddedValkey(directory)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
async def template_database(pg_server: PgServer) -> AsyncIterator[str]:
    """A database with the APES schema, materialized summaries and pipectl's schema."""
    name = f"pipectl_tpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await load_schemas(dsn_for(pg_server.dsn, name))
    yield name
    await _drop(pg_server.dsn, name)


async def _drop(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    """DSN of a fresh database for this test (APES + pipectl schema, no rows of activity)."""
    name = f"pipectl_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield dsn_for(pg_server.dsn, name)
    await _drop(pg_server.dsn, name)


@pytest.fixture
async def empty_database(pg_server: PgServer) -> AsyncIterator[str]:
    """DSN of a database with nothing in it (for migration and preset loading tests)."""
    name = f"pipectl_e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield dsn_for(pg_server.dsn, name)
    await _drop(pg_server.dsn, name)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
