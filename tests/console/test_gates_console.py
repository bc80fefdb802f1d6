"""A held step in the console: the step detail shows the gates' evidence; "publish anyway"
confirms with the exact held run and its gates, files the request, and a real agent
publishes it."""

from __future__ import annotations

import json

import asyncpg

from pipectl.console.messages import RequestFiled
from pipectl.console.screens.dialogs import PublishDialog
from pipectl.console.screens.step import StepScreen
from tests.agent.conftest import running_agent
from tests.agent.test_gates import GATED, _done, _runs, _summary
from tests.console.conftest import Recorder, console_app, plain, settle
from tests.console.test_hostile_text import open_row, shown, table_of
from tests.helpers import wait_for


async def _rerun(db: asyncpg.Connection) -> None:
    """A rerun filed as SQL (this connection has no JSON codec)."""
    request_id = await db.fetchval(
        "INSERT INTO pipectl.requests (kind, target) VALUES ('rerun', 'gt') RETURNING id"
    )
    await wait_for(lambda: _done(db, request_id))


async def test_held_step_shows_its_gates_and_publishes_after_confirmation(
    database: str, db: asyncpg.Connection, recorder: Recorder
) -> None:
    await _summary(db, unique=True)
    body = GATED.format(checks="")
    async with running_agent(database, body):
        await _rerun(db)
        await db.execute("DELETE FROM public.gt_src WHERE k >= 3")
        await _rerun(db)
        held = (await _runs(db, "gt"))[-1]
        assert held["status"] == "held"

        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(140, 45), message_hook=recorder) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            await open_row(pilot, app, "gt")
            await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
            text = shown(app)
            assert f"Held by a gate · run {held['id']}" in text
            assert "held: gt_sum rows 16 → 3, below 50 % of the previous content" in text
            assert "gt_sum groups (k): 13 of 16 lost" in text
            active = {b.binding.action for b in app.screen.active_bindings.values()}
            assert "publish" in active

            await pilot.press("P")
            dialog = await settle(
                pilot, lambda: isinstance(app.screen, PublishDialog) and app.screen
            )
            assert f"held run {held['id']}" in str(dialog.query_one("#dialog").border_title)
            assert "row_count" in plain(dialog.query_one("#gates"))
            await pilot.click("#confirm")
            assert "a reason is needed" in plain(dialog.query_one("#problem"))
            await pilot.press(*"rules retired", "enter")
            filed = await settle(pilot, lambda: recorder.of(RequestFiled))
            request_id = filed[0].request.id
            row = await wait_for(lambda: _done(db, request_id))
            assert row["outcome"] == "succeeded", row["detail"]
            await settle(
                pilot,
                lambda: (
                    isinstance(app.screen, StepScreen)
                    and app.screen.snapshot is not None
                    and app.screen.snapshot.held is None
                ),
            )
            active = {b.binding.action for b in app.screen.active_bindings.values()}
            assert "publish" not in active
    assert row["kind"] == "publish" and row["reason"] == "rules retired"
    assert json.loads(row["args"]) == {"run": held["id"]}
    assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == 3
