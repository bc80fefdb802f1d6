"""SVG snapshots of the main screens at 80x24 and 160x48, on the seeded incident.

The database has a fixed name (it shows in the header), the clock is the incident's NOW, the
cursor does not blink; colours are on (one snapshot checks NO_COLOR)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
import pytest
from textual.pilot import Pilot

from pipectl.console.screens.base import DataScreen
from pipectl.console.screens.dialogs import Dialog
from tests.conftest import PgServer
from tests.console.conftest import console_app, settle
from tests.console.seed import seed
from tests.helpers import dsn_for

SNAPSHOT_DB = "pipectl_console_snapshots"
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.fixture(scope="module")
async def snapshot_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{SNAPSHOT_DB}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{SNAPSHOT_DB}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    dsn = dsn_for(pg_server.dsn, SNAPSHOT_DB)
    conn = await asyncpg.connect(dsn)
    try:
        await seed(conn)
    finally:
        await conn.close()
    yield dsn
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{SNAPSHOT_DB}" WITH (FORCE)')
    finally:
        await admin.close()


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
