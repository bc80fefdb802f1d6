"""Issue 13 §1 in the console: text from the database is data. The hostile corpus
(tests/reliability/hostile_text.py) sits in every field of every row; the real app is driven
through every screen, every step and check detail, the dialogs, the toasts of a request, the
help, the filter and the command palette. Nothing crashes, no raw control character reaches
the screen, and each entry is visible as literal text (markup as typed, controls as escapes).
"""

from __future__ import annotations

import io
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
from rich.console import Console
from rich.text import Text
from textual.command import CommandPalette
from textual.content import Content
from textual.widget import Widget
from textual.widgets import DataTable, OptionList, Static
from textual.widgets._toast import Toast

from pipectl.console.app import PipectlApp
from pipectl.console.screens.cache import CacheScreen
from pipectl.console.screens.checks import CheckScreen, ChecksScreen
from pipectl.console.screens.dialogs import PauseDialog, RerunDialog, SilenceDialog
from pipectl.console.screens.help import HelpScreen
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.screens.requests import RequestsScreen
from pipectl.console.screens.step import StepScreen
from pipectl.console.screens.timeline import TimelineScreen
from pipectl.console.widgets.chart import LevelLines, RatioChart, TimeChart
from pipectl.console.widgets.overtime import Drawn
from pipectl.console.widgets.table import LiveTable
from pipectl.identifiers import quote_ident
from tests.console.conftest import console_app, settle
from tests.console.seed import NOW
from tests.reliability.conftest import as_user
from tests.reliability.hostile_text import (
    BY_KEY,
    CORPUS,
    HOSTILE_NAME,
    HOSTILE_NAME_NEEDLE,
    OUTCOME,
    OUTCOME_NEEDLES,
    raw_controls,
    seed_hostile,
)

SIZE = (220, 60)
ALL_NEEDLES = [h.needle for h in CORPUS]


async def seeded(database: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database)
    try:
        return await seed_hostile(conn, NOW)
    finally:
        await conn.close()


def as_text(renderable: object) -> str:
    """What a renderable shows, as plain text; a Rich renderable is printed the way Textual's
    own console would (markup on, emoji off)."""
    if isinstance(renderable, Text | Content):
        return renderable.plain
    if isinstance(renderable, str):
        return renderable
    console = Console(
        width=SIZE[0], file=io.StringIO(), record=True, color_system=None, emoji=False
    )
    console.print(renderable)
    return console.export_text()


def widget_text(widget: Widget) -> list[str]:
    """A widget's border titles and content: every cell of a table, a Static's content, a
    chart's lines, a toast's title and message."""
    parts = [
        title.plain
        for title in (widget._border_title, widget._border_subtitle)
        if title is not None
    ]
    if isinstance(widget, DataTable):
        for index in range(widget.row_count):
            cells = [as_text(cell) for cell in widget.get_row_at(index)]
            assert not any("\n" in cell for cell in cells), "a cell is one line"
            parts += cells
    elif isinstance(widget, Toast | RatioChart | LevelLines | TimeChart | Drawn):
        parts.append(as_text(widget.render()))
    elif isinstance(widget, Static):
        visual = widget.visual
        parts.append(visual.plain if isinstance(visual, Content) else as_text(widget.content))
    elif isinstance(widget, OptionList):
        parts += [as_text(widget.get_option_at_index(i).prompt) for i in range(widget.option_count)]
    return parts


def shown(app: PipectlApp) -> str:
    """Everything the current screen shows, as text, after checking what reaches the screen
    itself (the SVG screenshot is made of the segments a terminal would be sent). Panels that
    show a text in full (an error, SQL) keep its lines; a table cell is one line."""
    screenshot = app.export_screenshot()
    assert raw_controls(screenshot, joiners=False) == [], "a raw control reached the screen"
    text = "\n".join(part for widget in app.screen.query("*") for part in widget_text(widget))
    assert raw_controls(text) == []
    return text


def assert_visible(text: str, needles: list[str]) -> None:
    missing = [needle for needle in needles if needle not in text]
    assert missing == [], f"not shown as literal text: {missing}"


def table_of(app: PipectlApp) -> LiveTable:
    return app.screen.query_one("#table", LiveTable)


async def open_row(pilot: Any, app: PipectlApp, key: str) -> None:
    """Put the cursor on a row by key and press enter, as an operator would."""
    table = table_of(app)
    table.move_cursor(row=table.get_row_index(key))
    await pilot.press("enter")


async def test_every_screen_shows_the_corpus_as_literal_text(database: str) -> None:
    await seeded(database)
    app = console_app(database)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 2 * len(CORPUS) + 1)
        assert isinstance(app.screen, OverviewScreen)
        text = shown(app)
        # A note is a paused step's reason or a failed step's error; tiles name the agents.
        assert_visible(text, [*ALL_NEEDLES, HOSTILE_NAME_NEEDLE, "[/] stray"])
        assert ":warning:" in text and "⚠ :" not in text, "emoji codes are text too"

        screens = [
            ("2", ChecksScreen, [*ALL_NEEDLES, HOSTILE_NAME_NEEDLE]),
            # The panel's title names its source; level names are cut to the gutter.
            ("3", CacheScreen, [BY_KEY["osc_title"].needle, "[bold]not", "[/] stray"]),
            ("4", TimelineScreen, [*ALL_NEEDLES, HOSTILE_NAME_NEEDLE]),
            ("5", RequestsScreen, ALL_NEEDLES),
        ]
        for key, screen_type, needles in screens:
            await pilot.press(key)
            await settle(
                pilot,
                lambda t=screen_type: isinstance(app.screen, t) and app.screen.snapshot,  # type: ignore[misc]
            )
            assert_visible(shown(app), needles)
            await pilot.press("question_mark")
            await settle(pilot, lambda: isinstance(app.screen, HelpScreen))
            assert "Keys and actions of this screen" in shown(app)
            await pilot.press("escape")
        await pilot.press("1")
        await settle(pilot, lambda: isinstance(app.screen, OverviewScreen))


async def test_every_step_and_check_detail(database: str) -> None:
    await seeded(database)
    app = console_app(database)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 2 * len(CORPUS) + 1)
        for entry in CORPUS:
            await open_row(pilot, app, f"p_{entry.key}")
            await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
            text = shown(app)
            # Facts (reason, relation, schedule, upstream, description), the error panel,
            # the runs table and the SQL panel all carry the entry.
            assert text.count(entry.needle) >= 5, (entry.key, text.count(entry.needle))
            await pilot.press("escape")
        await open_row(pilot, app, HOSTILE_NAME)
        await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
        assert_visible(shown(app), [HOSTILE_NAME_NEEDLE])
        await pilot.press("escape")

        await pilot.press("2")
        await settle(pilot, lambda: isinstance(app.screen, ChecksScreen) and app.screen.snapshot)
        for entry in CORPUS:
            await open_row(pilot, app, f"c_{entry.key}")
            await settle(pilot, lambda: isinstance(app.screen, CheckScreen) and app.screen.snapshot)
            text = shown(app)
            # kind and target, the silence, the latest message, the results, the SQL.
            assert text.count(entry.needle) >= 4, (entry.key, text.count(entry.needle))
            await pilot.press("escape")


async def test_dialogs_toasts_filter_and_palette(database: str) -> None:
    agents = (await seeded(database))["agents"]
    app = console_app(database)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 2 * len(CORPUS) + 1)
        # The dialogs name the step: in their title, their text and the rerun plan.
        table_of(app).move_cursor(row=table_of(app).get_row_index(HOSTILE_NAME))
        await pilot.press("r")
        await settle(pilot, lambda: isinstance(app.screen, RerunDialog))
        assert shown(app).count(HOSTILE_NAME_NEEDLE) >= 2
        await pilot.press("escape")
        await pilot.press("p")
        await settle(pilot, lambda: isinstance(app.screen, PauseDialog))
        assert shown(app).count(HOSTILE_NAME_NEEDLE) >= 2
        await pilot.press(*"because", "enter")
        await settle(pilot, lambda: toasts(app))
        assert_visible(shown(app), [f"pause {HOSTILE_NAME_NEEDLE} — because"])

        # The request as an agent would carry it out: claimed, then failed, with a detail.
        conn = await asyncpg.connect(database)
        try:
            request_id = await conn.fetchval("SELECT max(id) FROM pipectl.requests")
            await conn.execute(
                "UPDATE pipectl.requests SET claimed_by = $2, claimed_at = now() WHERE id = $1",
                request_id,
                agents["osc_title"],
            )
            await settle(pilot, lambda: any("claimed by" in t for t in toasts(app)))
            await conn.execute(
                "UPDATE pipectl.requests SET done_at = now(), outcome = 'failed', detail = $2"
                " WHERE id = $1",
                request_id,
                OUTCOME,
            )
            await settle(pilot, lambda: any("failed" in t for t in toasts(app)))
        finally:
            await conn.close()
        text = shown(app)
        assert_visible(text, [*OUTCOME_NEEDLES, BY_KEY["osc_title"].needle])

        # The filter box takes brackets as text.
        await pilot.press("slash", *"[/]")
        assert "/[/]" in table_of(app)._border_title.plain  # type: ignore[union-attr]
        await pilot.press("escape")

        # The palette's help text names each key: the filter key `/` was `[/]`, a closing tag.
        await pilot.press("ctrl+p")
        await settle(pilot, lambda: isinstance(app.screen, CommandPalette) and palette(app))
        assert any("[/]" in line for line in palette(app)), palette(app)
        await pilot.press(*"filter")
        await settle(pilot, lambda: any("Filter" in line for line in palette(app)))
        assert any("[/]" in line for line in palette(app))
        await pilot.press("escape")

        await pilot.press("2")
        await settle(pilot, lambda: isinstance(app.screen, ChecksScreen) and app.screen.snapshot)
        table_of(app).move_cursor(row=table_of(app).get_row_index(HOSTILE_NAME))
        await pilot.press("m")
        await settle(pilot, lambda: isinstance(app.screen, SilenceDialog))
        assert shown(app).count(HOSTILE_NAME_NEEDLE) >= 2
        await pilot.press("escape")
        assert app.is_running


def toasts(app: PipectlApp) -> list[str]:
    return ["\n".join(widget_text(toast)) for toast in app.screen.query(Toast)]


def palette(app: PipectlApp) -> list[str]:
    lists = app.screen.query(OptionList)
    return [line for option_list in lists for line in widget_text(option_list)]


async def test_a_hostile_login_name_is_shown_literally_in_the_header(database: str) -> None:
    """Role names may hold any character: the header shows who you are, literally."""
    await seeded(database)
    role = f"pipectl_t_{uuid.uuid4().hex[:8]}[/]\x1b]0;t\x07"
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(f"CREATE ROLE {quote_ident(role)} LOGIN IN ROLE pipectl_viewer")
        app = console_app(as_user(database, quote(role, safe="")))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, lambda: app.connection.connected and table_of(app).row_count)
            assert app.connection.user == role
            assert app.read_only
            assert_visible(shown(app), [f"{role[:18]}[/]\\x1b]0;t\\x07@"])
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
        await conn.close()
