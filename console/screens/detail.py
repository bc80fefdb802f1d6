"""What the step and check detail screens share: facts on top, a time chart, the history table,
and side panels — stacked on narrow terminals, beside each other on wide ones."""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Static

from pipectl.console.live import Change
from pipectl.console.screens.base import TableScreen
from pipectl.console.widgets.chart import TimeChart
from pipectl.safetext import BLOCK, literal, visible

T = TypeVar("T")


class DetailScreen(TableScreen[T]):
    """The detail of one subject (a step, a check): reloads only for changes about it."""

    SIDE_PANELS: ClassVar[tuple[str, ...]] = ()
    NOUN: ClassVar[str] = ""

    def __init__(self, subject: str) -> None:
        super().__init__()
        self.subject = subject
        self._to_place = False  # its first data is shown, its view not placed yet

    @property
    def settled(self) -> bool:
        return super().settled and not self._to_place

    def first_shown(self) -> None:
        """Once, when the facts and the history are first laid out: scroll the whole history
        table into view (its cursor moves inside it, and the keys go to it), the facts above
        it as far as room allows. Later loads keep wherever the operator scrolled."""
        self._to_place = True
        self.call_after_refresh(self._place)

    def on_mount(self) -> None:
        self.screen_layout_refresh_signal.subscribe(self, self._laid_out)

    def on_screen_resume(self) -> None:
        """Covered (a dialog) before its first data was laid out: placed now."""
        if self._to_place:
            self.call_after_refresh(self._place)

    def _laid_out(self, screen: object) -> None:
        del screen
        if self._to_place:
            self._place()

    def _place(self) -> None:
        """Each widget asks for its layout from its own task, when idle; the screen runs
        after-refresh callbacks when it is idle, and which comes first is up to the event
        loop. Placed before the facts were laid out, the view would be measured against their
        height from before the data: so while a layout is pending this waits for the screen's
        next layout (never re-posting itself, which would keep the screen busy and starve the
        very widgets it waits for)."""
        if not self._to_place or self.app.screen is not self:
            # A covered screen (even under a dialog, where it shows) is not laid out: it is
            # placed when shown again.
            return
        detail = self.query_one("#detail", VerticalScroll)
        if _layout_pending(self, detail):
            return
        detail.scroll_to_widget(self.table, animate=False, immediate=True)
        self._to_place = False

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="detail"), Horizontal(id="columns"):
            with Vertical(id="main"):
                yield Static(id="info")
                yield Static(id="spark-label")
                yield TimeChart(id="chart")
                yield from self.compose_table()
            with Vertical(id="side"):
                for panel in self.SIDE_PANELS:
                    yield Static(id=panel, classes="panel")

    def wants(self, change: Change) -> bool:
        return change.table in self.INTERESTS and change.subject in (self.subject, None)

    def show_missing(self) -> None:
        self.query_one("#info", Static).update(
            literal(f"{self.NOUN} {self.subject!r} is not published (any more).", "bold")
        )

    def show_sql(self, sql: str | None, otherwise: str) -> None:
        """The SQL as published (by whoever could write the row): highlighted, never run,
        control characters escaped, cut when huge. (rich.syntax loads Pygments: imported
        when a detail screen shows SQL, not with the console's first screen.)"""
        from rich.syntax import Syntax

        panel = self.query_one("#sql", Static)
        panel.border_title = "SQL"
        panel.update(
            Syntax(
                visible(sql, limit=BLOCK, multiline=True),
                "sql",
                word_wrap=True,
                theme="ansi_dark",
            )
            if sql
            else literal(otherwise, "dim")
        )


def _layout_pending(screen: Screen[Any], part: Widget) -> bool:
    """Whether the screen, or a widget of `part`, holds changes its layout does not show yet.
    (Textual keeps these flags private; its version is pinned.)"""
    return (
        screen._layout_required
        or bool(screen._layout_widgets)
        or part._layout_required
        or any(widget._layout_required for widget in part.query("*"))
    )
