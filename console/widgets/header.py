"""The header every screen shows: where you are, the database link, and the read-only badge.

The link names the database as host/db. An entry point that knows more sets the App's
`sub_title`, shown in its place: the demo names its embedded server as host:port/db (the
port changes from run to run) and adds the progress of the history it is still loading."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from pipectl.console.actions import SCREENS
from pipectl.console.messages import Connection
from pipectl.durations import humanize_age
from pipectl.safetext import CELL, visible

if TYPE_CHECKING:
    from pipectl.console.app import PipectlApp


class ScreenTab(Static):
    """`1 Overview`: shows the key, and switches screen on click."""

    def __init__(self, name: str, key: str, label: str) -> None:
        super().__init__(Text.assemble((key, "bold"), " ", label), classes="tab")
        self.screen_name = name

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        await self.app.run_action(f"show_screen('{self.screen_name}')")


class LinkStatus(Static):
    """● live / ◌ connecting / ✗ lost (retrying) / ✗ schema, with the target and user."""

    def render_link(self, link: Connection, where: str = "") -> None:
        marks = {"connected": "●", "connecting": "◌", "lost": "✗", "schema": "✗"}
        words = {
            "connected": "live",
            "connecting": "connecting",
            "lost": "disconnected",
            "schema": "schema",
        }
        text = Text(f"{marks[link.state]} {words[link.state]}", style="bold")
        # The user, the target and the server's words are shown literally, on this line.
        who = f"{link.user}@" if link.user else ""
        place = where or _short_target(link.target)
        text.append(visible(f"  {who}{place}", limit=CELL), style="dim")
        if link.state == "lost":
            retry = f", retrying in {humanize_age(link.retry_in)}" if link.retry_in else ""
            text.append(f"  {visible(link.detail)}{retry}")
        elif link.state == "schema":
            text.append(f"  {visible(link.detail)}")
        self.update(text)
        for state in marks:
            self.set_class(state == link.state, f"-{state}")


class StatusHeader(Horizontal):
    """Two lines: the screens (number keys, the current one lit), then the link and the
    READ-ONLY badge."""

    def __init__(self) -> None:
        super().__init__(id="header")

    def compose(self) -> ComposeResult:
        with Horizontal(id="tabs"):
            yield Static("pipectl", id="brand")
            for name, key, label, _ in SCREENS:
                yield ScreenTab(name, key, label)
        with Horizontal(id="status-line"):
            yield LinkStatus(id="link")
            yield Static("READ-ONLY", id="badge")

    def on_mount(self) -> None:
        app: PipectlApp = self.app  # type: ignore[assignment]
        # A detail screen lights the tab of the screen it was opened from (its mode).
        for tab in self.query(ScreenTab):
            tab.set_class(tab.screen_name == app.current_mode, "-active")
        self.watch(app, "connection", self._show_link)
        self.watch(app, "sub_title", self._show_where)
        self.watch(app, "read_only", self._show_badge)

    def _show_link(self, link: Connection) -> None:
        self.query_one(LinkStatus).render_link(link, self.app.sub_title)

    def _show_where(self, where: str) -> None:
        app: PipectlApp = self.app  # type: ignore[assignment]
        self.query_one(LinkStatus).render_link(app.connection, where)

    def _show_badge(self, read_only: bool) -> None:
        self.query_one("#badge").display = read_only


def _short_target(target: str) -> str:
    """postgresql://user:pw@host:5432/db?x -> host/db (the user is shown separately)."""
    if "://" not in target:
        return target
    parts = urlsplit(target)
    return f"{parts.hostname or 'localhost'}{parts.path or ''}"
