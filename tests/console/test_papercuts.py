"""The operator papercuts of issue 15 §5, one test each: screen keys, toasts, the schedule in
force, a paused step's next run, the silence dialog's labels, Esc on a filter, pause's reason."""

from __future__ import annotations

from typing import Any

import asyncpg
from textual.notifications import Notify
from textual.widgets import Input, Label
from textual.widgets._toast import Toast

from pipectl.console.screens.checks import CheckScreen, ChecksScreen
from pipectl.console.screens.dialogs import PauseDialog, SilenceDialog
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.screens.step import StepScreen
from tests.agent.conftest import running_agent, steps_toml
from tests.console.conftest import Recorder, console_app, plain, settle
from tests.console.test_screens import cell, table_of


def loaded(app: Any, kind: type[Any]) -> Any:
    screen = app.screen
    return screen if isinstance(screen, kind) and screen.snapshot is not None else None


async def test_screen_keys_go_to_the_screen_named_never_to_a_stale_detail(
    incident: str,
) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("down", "enter")
        await settle(pilot, lambda: loaded(app, StepScreen))
        await pilot.press("2")
        await settle(pilot, lambda: loaded(app, ChecksScreen))
        await pilot.press("down", "enter")
        await settle(pilot, lambda: loaded(app, CheckScreen))
        # Back to the Overview: its list, not the step detail left open there.
        await pilot.press("1")
        await settle(pilot, lambda: loaded(app, OverviewScreen))
        assert len(app.screen_stack) == 1
        await pilot.press("2")
        await settle(pilot, lambda: loaded(app, ChecksScreen))
        assert len(app.screen_stack) == 1
        # Pressed on its own screen, a key closes the detail too.
        await pilot.press("down", "enter")
        await settle(pilot, lambda: loaded(app, CheckScreen))
        await pilot.press("2")
        assert isinstance(app.screen, ChecksScreen)


async def test_one_small_toast_per_request_clear_of_the_row_acted_on(
    database: str, recorder: Recorder
) -> None:
    async with running_agent(database, steps_toml()):
        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(120, 40), message_hook=recorder, notifications=True) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            table = table_of(app)
            await pilot.press("down", "r")
            await settle(pilot, lambda: app.screen.query("#reason"))
            await pilot.press(*"check the toasts", "enter")
            await settle(pilot, lambda: isinstance(app.screen, OverviewScreen))
            await settle(pilot, lambda: any("succeeded" in n.title for n in app._notifications))
            told = [m.notification.title for m in recorder.of(Notify)]
            assert len(told) >= 2, "filed, then its outcome"
            # Each state replaced the one before: one toast for the request on screen.
            assert len(app._notifications) == 1
            await pilot.pause()
            toasts = list(app.screen.query(Toast))
            assert len(toasts) == 1
            toast = toasts[0].region
            assert toast.height <= 4 and toast.width <= 48
            row_y = (
                table.region.y + 2 + table.cursor_row - int(table.scroll_y)
            )  # border and header above the rows
            assert not toast.y <= row_y < toast.bottom, "the toast hides the row acted on"
            assert toast.y < table.region.y, "toasts stack above the table, under the header"


async def test_check_detail_shows_the_schedule_in_force(incident: str) -> None:
    conn = await asyncpg.connect(incident)
    try:
        # Published as every 5m, while its results arrive every minute (seed).
        await conn.execute(
            "UPDATE pipectl.checks SET schedule = 'every 5m' WHERE name = 'request_latency_p95'"
        )
    finally:
        await conn.close()
    app = console_app(incident)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        app.push_screen(CheckScreen("request_latency_p95"))
        screen = await settle(pilot, lambda: loaded(app, CheckScreen))
        info = plain(screen.query_one("#info"))
        assert "every 5m · results every 1.0m" in info or "every 5m · results every 1m" in info
        app.push_screen(CheckScreen("avg_improvement_score"))
        screen = await settle(pilot, lambda: loaded(app, CheckScreen))
        info = plain(screen.query_one("#info"))
        assert "every 1m" in info and "results every" not in info
        # The status explained; the threshold panel is words, not JSON.
        assert "60 results in a row outside" in " ".join(info.split())
        judged = plain(screen.query_one("#threshold"))
        assert "warn above" in judged and "{" not in judged


async def test_a_paused_step_shows_no_next_run(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        assert cell(table_of(app), "rule_combinations_rollup", "next") == "paused"
        app.push_screen(StepScreen("rule_combinations_rollup"))
        screen = await settle(pilot, lambda: loaded(app, StepScreen))
        info = plain(screen.query_one("#info"))
        assert "none while paused" in info
        assert "in 1h" not in info  # the next_run_at the row still holds


async def test_silence_dialog_labels_its_fields(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("2")
        await settle(pilot, lambda: loaded(app, ChecksScreen))
        await pilot.press("down", "m")
        dialog = await settle(pilot, lambda: isinstance(app.screen, SilenceDialog) and app.screen)
        labels = [str(label.content) for label in dialog.query(Label)]
        assert any(text.startswith("For how long") for text in labels)
        assert any(text.startswith("Why") for text in labels)
        # Each label sits right above its field.
        span = dialog.query_one("#span", Input)
        label = next(lb for lb in dialog.query(Label) if str(lb.content).startswith("For"))
        assert label.region.bottom == span.region.y


async def test_escape_clears_an_applied_filter(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("slash", *"rule", "enter")
        assert table_of(app).row_count == 2
        assert app.screen.focused is table_of(app)
        await pilot.press("escape")
        assert table_of(app).row_count == 4
        assert not app.screen.query_one("#filter").display
        # On a detail screen: Esc clears the filter first, then goes back.
        await pilot.press("down", "enter")
        await settle(pilot, lambda: loaded(app, StepScreen))
        rows = table_of(app).row_count
        await pilot.press("slash", *"zzz", "enter")
        assert table_of(app).row_count == 0
        await pilot.press("escape")
        assert isinstance(app.screen, StepScreen)
        assert table_of(app).row_count == rows
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_pause_requires_a_reason(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4 and app.connection.can_write)
        table = table_of(app)
        table.move_cursor(row=table.get_row_index("session_cleanup"))
        await pilot.press("p")
        dialog = await settle(pilot, lambda: isinstance(app.screen, PauseDialog) and app.screen)
        await pilot.press("enter")  # an empty reason
        assert isinstance(app.screen, PauseDialog)
        assert "a reason is needed" in plain(dialog.query_one("#problem"))
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)
    conn = await asyncpg.connect(incident)
    try:
        filed = await conn.fetchval("SELECT count(*) FROM pipectl.requests WHERE kind = 'pause'")
    finally:
        await conn.close()
    assert filed == 0
