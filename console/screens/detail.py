"""What the step and check detail screens share: facts on top, a time chart, the history table,
and side panels — stacked on narrow terminals, beside each other on wide ones."""

from __future__ import annotations

from typing import ClassVar, TypeVar

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
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
        self._placed = False

    @property
    def settled(self) -> bool:
        return super().settled and self._placed

    def first_shown(self) -> None:
        """Once, when the facts and the history are first laid out: scroll the whole history
        table into view (its cursor moves inside it, and the keys go to it), the facts above
        it as far as room allows. Later loads keep wherever the operator scrolled."""
        self.call_after_refresh(self._place)

    def _place(self) -> None:
        self.query_one("#detail", VerticalScroll).scroll_to_widget(
            self.table, animate=False, immediate=True
        )
        self._placed = True

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
