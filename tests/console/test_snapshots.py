"""SVG snapshots of the main screens at 80x24 and 160x48, on the seeded incident.

The database has a fixed name (it shows in the header), the clock is the incident's NOW, the
cursor does not blink; colours are on (one snapshot checks NO_COLOR)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import pytest
from textual.pilot import Pilot

from pipectl.console.screens.base import DataScreen
from pipectl.console.screens.dialogs import Dialog
from tests.conftest import PgServer
from tests.console.conftest import console_app, settle
from tests.console.seed import seed
from tests.console.test_overview import fail_on_a_lock
from tests.helpers import dsn_for

SNAPSHOT_DB = "pipectl_console_snapshots"
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


# The seeded incident made healthy: every run succeeded, nothing paused or silenced, every
# check ok, the app cache above its target.
HEALTHY = """
UPDATE pipectl.runs SET status = 'succeeded', error = NULL, rows = 100 WHERE status = 'failed';
DELETE FROM pipectl.runs WHERE status = 'skipped';
UPDATE pipectl.steps SET paused = false, paused_by = NULL, paused_at = NULL, paused_reason = NULL;
UPDATE pipectl.checks SET status = 'ok', silenced_until = NULL, silenced_by = NULL,
    silence_reason = NULL;
UPDATE pipectl.check_results SET status = 'ok';
UPDATE pipectl.check_results SET value = greatest(value, 0.84)
    WHERE check_name = 'app_cache_hit_ratio';
UPDATE pipectl.samples SET value = greatest(value, 0.84) WHERE series = 'app_cache_hit_ratio';
DELETE FROM pipectl.samples_hourly;
INSERT INTO pipectl.samples_hourly (series, hour, n, total)
    SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)
    FROM pipectl.samples GROUP BY 1, 2;
"""


async def _snapshot_db(
    pg_server: PgServer, template: str, name: str, then: Callable[[str], Awaitable[None]]
) -> str:
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    dsn = dsn_for(pg_server.dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await seed(conn)
    finally:
        await conn.close()
    await then(dsn)
    return dsn


async def _drop(pg_server: PgServer, name: str) -> None:
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _as_seeded(dsn: str) -> None:
    del dsn


async def _healthy(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(HEALTHY)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def snapshot_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    yield await _snapshot_db(pg_server, template_database, SNAPSHOT_DB, _as_seeded)
    await _drop(pg_server, SNAPSHOT_DB)


@pytest.fixture(scope="module")
async def healthy_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    """The header shows the database's name, so each variant's name is fixed too."""
    name = f"{SNAPSHOT_DB}_healthy"
    yield await _snapshot_db(pg_server, template_database, name, _healthy)
    await _drop(pg_server, name)


@pytest.fixture(scope="module")
async def lock_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"{SNAPSHOT_DB}_lock"
    yield await _snapshot_db(pg_server, template_database, name, fail_on_a_lock)
    await _drop(pg_server, name)


@pytest.fixture
def colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)


def loaded(*keys: str) -> Callable[[Pilot[Any]], Any]:
    """Press keys one at a time, each time waiting for the screen it leads to to be loaded."""

    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot, lambda: _ready(pilot))
        for key in keys:
            await pilot.press(key)
            await settle(pilot, lambda: _ready(pilot))
        await pilot.pause()

    return run


def _ready(pilot: Pilot[Any]) -> bool:
    screen = pilot.app.screen
    if isinstance(screen, Dialog):
        return True
    return not isinstance(screen, DataScreen) or (
        screen.snapshot is not None and not screen._loading
    )


def snap(
    snap_compare: Any, dsn: str, size: tuple[int, int], keys: Iterable[str] = (), **kw: Any
) -> bool:
    app = console_app(dsn, **kw)
    return bool(snap_compare(app, terminal_size=size, run_before=loaded(*keys)))


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_healthy(snap_compare: Any, healthy_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, healthy_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_step_failing_on_a_lock(
    snap_compare: Any, lock_db: str, size: tuple[int, int]
) -> None:
    """A step whose retries keep failing on a lock: red, with the attempt and the error."""
    assert snap(snap_compare, lock_db, size, ["down", "down"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_step_detail(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["down", "down", "enter"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_checks(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["2"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_check_detail(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["2", "down", "down", "down", "down", "enter"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_cache(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["3", "w"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_timeline(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["4"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_requests(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["5"])


@pytest.mark.usefixtures("colours")
def test_rerun_downstream_dialog(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["down", "R"])


@pytest.mark.usefixtures("colours")
def test_silence_dialog(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["2", "down", "m"])


@pytest.mark.usefixtures("colours")
def test_help(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["question_mark"])


@pytest.mark.usefixtures("colours")
def test_read_only_overview(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), read_only=True)


def test_overview_no_color(snap_compare: Any, snapshot_db: str) -> None:
    """NO_COLOR (set by the test environment): marks carry the state, not colours."""
    assert snap(snap_compare, snapshot_db, (80, 24))
