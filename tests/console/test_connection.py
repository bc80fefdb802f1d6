"""The link and the role: read-only (flag or missing privilege), lost connections, a missing
schema, an unreachable server — each a state on screen, never a traceback."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pipectl.console.commands import ActionCommands
from pipectl.console.data import RequestDenied, RequestIntent, file_request
from pipectl.console.messages import ConnectionChanged
from pipectl.console.screens.dialogs import RerunDialog
from pipectl.console.screens.help import HelpScreen
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.screens.schema import SchemaScreen
from pipectl.console.widgets.header import LinkStatus
from pipectl.db import connect
from tests.conftest import PgServer
from tests.console.conftest import Recorder, console_app, plain, settle
from tests.console.test_screens import table_of
from tests.helpers import make_config

WRITE_ACTIONS = {"rerun", "rerun_downstream", "pause", "resume", "check_now"}


async def palette_titles(app: object) -> list[str]:
    provider = ActionCommands(app.screen)  # type: ignore[attr-defined]
    return [str(hit.text) async for hit in provider.discover()]


async def test_read_only_flag_hides_every_write_action(incident: str) -> None:
    app = console_app(incident, read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        assert app.read_only
        assert app.screen.query_one("#badge").display
        active = {b.binding.action for b in app.screen.active_bindings.values()}
        assert not active & WRITE_ACTIONS
        assert {"filter", "sort", "help", "quit"} <= active
        titles = await palette_titles(app)
        assert not [t for t in titles if t.startswith(("Rerun", "Pause", "Check now"))]
        assert "Filter" in titles
        await pilot.press("down", "r")  # nothing happens: the key is not bound to anything
        assert isinstance(app.screen, OverviewScreen)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = plain(app.screen.query_one("#help Static"))
        assert "READ-ONLY" in text and "Rerun" in text.split("READ-ONLY")[1]


async def test_without_insert_privilege_the_console_is_read_only(
    pg_server: PgServer, incident: str
) -> None:
    """PostgreSQL enforces it; the console only reflects it."""
    role = f"pipectl_view_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(incident)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE pipectl_viewer')
        parts = urlsplit(incident)
        viewer_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        app = console_app(viewer_dsn)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 4)
            assert app.connection.user == role and not app.connection.can_write
            assert app.read_only and app.screen.query_one("#badge").display
            active = {b.binding.action for b in app.screen.active_bindings.values()}
            assert not active & WRITE_ACTIONS
        viewer = await connect(make_config(viewer_dsn))
        try:
            with pytest.raises(RequestDenied, match="needs pipectl_operator"):
                await file_request(viewer, RequestIntent("rerun", "session_cleanup", "x"))
        finally:
            await viewer.close()
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_lost_connection_is_shown_and_comes_back(incident: str, recorder: Recorder) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40), message_hook=recorder) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        admin = await asyncpg.connect(incident)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'pipectl console' AND datname = current_database()"
            )
        finally:
            await admin.close()
        assert killed >= 2  # the pool's connection and the listener
        await settle(pilot, lambda: any(
            m.connection.state == "lost" for m in recorder.of(ConnectionChanged)
        ))  # fmt: skip
        await settle(pilot, lambda: app.connection.connected)
        states = [m.connection.state for m in recorder.of(ConnectionChanged)]
        assert states[:2] == ["connecting", "connected"]
        assert "lost" in states[2:] and states[-1] == "connected"
        lost = next(
            m.connection for m in recorder.of(ConnectionChanged) if m.connection.state == "lost"
        )
        assert lost.detail and lost.retry_in is not None
        # Live again: a change shows up without any key pressed.
        admin = await asyncpg.connect(incident)
        try:
            await admin.execute(
                "UPDATE pipectl.steps SET paused = true WHERE name = 'session_cleanup'"
            )
        finally:
            await admin.close()
        table = table_of(app)
        await settle(pilot, lambda: str(table.get_cell("session_cleanup", "state")) == "⏸ paused")
        assert app.return_value is None and app._exception is None


async def test_missing_schema_shows_what_to_run(empty_database: str) -> None:
    app = console_app(empty_database)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(
            pilot,
            lambda: (
                isinstance(app.screen, SchemaScreen)
                and "pipectl db upgrade" in plain(app.screen.query_one("#schema-problem"))
            ),
        )
        text = plain(app.screen.query_one("#schema-problem"))
        assert "pipectl db upgrade" in text
        assert "needs" in text  # "the pipectl schema is at version 0, this pipectl needs N"
        assert app.connection.state == "schema"
        link = plain(app.screen_stack[0].query_one(LinkStatus))
        assert "schema" in link


async def _console_connections(dsn: str) -> int:
    admin = await asyncpg.connect(dsn)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'pipectl console' AND datname = current_database()"
            )
        )
    finally:
        await admin.close()


async def test_a_schema_problem_leaves_no_connection_open(empty_database: str) -> None:
    """The listener's connection is opened with the pool (both before the schema is checked):
    when the schema is not usable, both are closed until the next try."""
    app = console_app(empty_database)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.connection.state == "schema")
        counts = [await _console_connections(empty_database)]
        while counts[-1] and len(counts) < 200:  # a closed backend leaves pg_stat_activity soon
            await pilot.pause(0.05)
            counts.append(await _console_connections(empty_database))
        assert counts[-1] == 0, counts
        assert app.connection.state == "schema"


async def test_unreachable_server_is_a_state_not_a_crash() -> None:
    app = console_app("postgresql://postgres@127.0.0.1:1/nowhere")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.connection.state == "lost")
        assert "connection refused" in app.connection.detail
        link = plain(app.screen.query_one(LinkStatus))
        assert "disconnected" in link and "connection refused" in link and "retrying" in link
        assert table_of(app).row_count == 0
        await pilot.press("r")  # an action while disconnected: no dialog, no traceback
        assert not isinstance(app.screen, RerunDialog)
        assert app._exception is None
