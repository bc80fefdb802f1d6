"""The console App: screens as modes, one connection service, and message handlers that own
the app-wide state (link, read-only, requests in flight). Everything else is delegated.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, cast

from textual import work
from textual.app import App
from textual.binding import BindingType
from textual.notifications import Notification, Notify, SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker

from pipectl.console import data
from pipectl.console.actions import APP, ActionRegistry, bindings
from pipectl.console.commands import ActionCommands
from pipectl.console.data import RequestDenied, RequestIntent
from pipectl.console.live import Change, ChangeRouter, RequestFeedback, Toast
from pipectl.console.messages import (
    Connection,
    ConnectionChanged,
    DatabaseChanged,
    RequestFiled,
    RequestProgress,
    RequestRefused,
)
from pipectl.console.screens.base import DataScreen
from pipectl.console.screens.lineage import LineageScreen, lineage_subject
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.service import ConsoleService, NotConnected
from pipectl.db import ConnectConfig
from pipectl.safetext import CELL, visible

if TYPE_CHECKING:
    from pipectl.console.screens.schema import SchemaScreen
    from pipectl.telemetry import Telemetry

Clock = Callable[[], datetime]


# The screens the console does not open with are imported when first shown: the first data is
# what the operator waits for (bench.cli_start, "console: first data").


def _checks_screen() -> Screen[None]:
    from pipectl.console.screens.checks import ChecksScreen

    return ChecksScreen()


def _cache_screen() -> Screen[None]:
    from pipectl.console.screens.cache import CacheScreen

    return CacheScreen()


def _timeline_screen() -> Screen[None]:
    from pipectl.console.screens.timeline import TimelineScreen

    return TimelineScreen()


def _requests_screen() -> Screen[None]:
    from pipectl.console.screens.requests import RequestsScreen

    return RequestsScreen()


def utc_now() -> datetime:
    return datetime.now(UTC)


class PipectlApp(App[None]):
    """`pipectl` with no verb. `clock` and `cursor_blink` exist so tests can pin what varies."""

    CSS_PATH = "app.tcss"
    TITLE = "pipectl"
    MODES: ClassVar[dict[str, Callable[[], Screen[None]]]] = {  # type: ignore[assignment]
        "overview": OverviewScreen,
        "checks": _checks_screen,
        "cache": _cache_screen,
        "timeline": _timeline_screen,
        "requests": _requests_screen,
    }
    BINDINGS: ClassVar[list[BindingType]] = bindings(APP)  # type: ignore[assignment]
    COMMANDS = App.COMMANDS | {ActionCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]

    connection: reactive[Connection] = reactive(Connection)
    read_only: reactive[bool] = reactive(False)

    def __init__(
        self,
        config: ConnectConfig,
        *,
        read_only: bool = False,
        clock: Clock = utc_now,
        cursor_blink: bool = True,
        service: ConsoleService | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.telemetry = telemetry
        """Spans of filing requests (pipectl.telemetry); None: no tracing."""
        self.forced_read_only = read_only
        self.clock = clock
        self.cursor_blink = cursor_blink
        self.service = service or ConsoleService(config)
        self.registry = ActionRegistry(read_only=read_only)
        self.changes = ChangeRouter(self.set_timer)
        self.feedback = RequestFeedback()
        self._schema_screen: SchemaScreen | None = None
        self._request_toasts: dict[int, Notification] = {}
        self._heap_settled = False
        self.set_reactive(PipectlApp.read_only, read_only)
        self.set_reactive(PipectlApp.connection, Connection(target=self.service.target))

    def on_load(self) -> None:
        # Connecting (network waits) starts before the stylesheet is applied and the first
        # screen is built (CPU), so the two overlap: the console's first data is what the
        # operator waits for.
        self._supervise()

    def on_mount(self) -> None:
        self.switch_mode("overview")

    def data_shown(self) -> None:
        """A screen showed data: the heap is settled once, a second later (its full collection
        takes ~50 ms, which neither the first data nor its paint may wait for)."""
        if not self._heap_settled:
            self._heap_settled = True
            self.set_timer(HEAP_SETTLE_DELAY, settle_heap)

    @work(exclusive=True, group="connection", exit_on_error=False)
    async def _supervise(self) -> None:
        await self.service.supervise(self.post_message)

    # ------------------------------------------------------------------ link and read-only

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        link = message.connection
        self.connection = link
        if link.state == "schema":
            self._show_schema_problem(link)
            return
        if link.connected:
            if self._schema_screen is not None:
                self._schema_screen.dismiss(None)
                self._schema_screen = None
            self.read_only = self.forced_read_only or not link.can_write
            self.changes.everything()

    def _show_schema_problem(self, link: Connection) -> None:
        if self._schema_screen is None:
            from pipectl.console.screens.schema import SchemaScreen

            self._schema_screen = SchemaScreen(link.detail, link.target)
            self.push_screen(self._schema_screen)
        else:
            self._schema_screen.show_problem(link.detail)

    def watch_read_only(self, read_only: bool) -> None:
        self.registry.read_only = read_only
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.registry.permits(action)

    # ------------------------------------------------------------------ live changes

    def on_database_changed(self, message: DatabaseChanged) -> None:
        self.changes.changed(Change.of(message.table, message.payload))
        request_id = message.payload.get("id")
        if (
            message.table == "requests"
            and isinstance(request_id, int)
            and self.feedback.is_mine(request_id)
        ):
            self._follow(request_id)

    # ------------------------------------------------------------------ requests

    def file_request(self, intent: RequestIntent) -> None:
        """File a request in a worker of its own; the outcome arrives as messages."""
        if self.registry.read_only:
            self.notify("read-only: requests are not allowed", severity="warning")
            return
        self._spawn(functools.partial(self._file, intent), f"file:{intent.kind}:{intent.target}")

    async def _file(self, intent: RequestIntent) -> None:
        try:
            request = await self.service.query(
                functools.partial(data.file_request, intent=intent, telemetry=self.telemetry)
            )
        except (RequestDenied, NotConnected) as exc:
            self.post_message(RequestRefused(intent, str(exc)))
        except Exception as exc:
            self.post_message(RequestRefused(intent, f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(RequestFiled(intent, request))

    def _spawn(self, job: Callable[[], Awaitable[None]], group: str) -> Worker[None]:
        """A worker per target (the decorator's group is fixed): a second request for the same
        target replaces a first one still being written, never one for another target."""
        work = cast("Callable[[], Coroutine[None, None, None]]", job)
        return self.run_worker(work, group=group, exclusive=True, exit_on_error=False)

    def on_request_filed(self, message: RequestFiled) -> None:
        self._toast(self.feedback.filed(message.intent, message.request))
        self._follow(message.request.id)

    def on_request_refused(self, message: RequestRefused) -> None:
        self._toast(self.feedback.refused(message.intent, message.error))

    def _follow(self, request_id: int) -> None:
        self._spawn(functools.partial(self._fetch_request, request_id), f"request:{request_id}")

    async def _fetch_request(self, request_id: int) -> None:
        fetch = functools.partial(data.request_row, request_id=request_id)
        try:
            row = await self.service.query(fetch)
        except Exception:
            return  # the NOTIFY of the next state change, or the Requests screen, tells
        if row is not None:
            self.post_message(RequestProgress(row))

    def on_request_progress(self, message: RequestProgress) -> None:
        for toast in self.feedback.progress(message.row):
            self._toast(toast)

    def _toast(self, toast: Toast) -> None:
        """One toast per request: its next state (claimed, done) replaces the one shown."""
        timeout = 10.0 if toast.severity == "error" else 6.0
        shown = self._request_toasts.pop(toast.request_id, None) if toast.request_id else None
        if shown is not None and shown in self._notifications:
            self._unnotify(shown)
        notification = Notification(
            visible(toast.message),
            visible(toast.title, limit=CELL),
            toast.severity,
            timeout,
            markup=False,
        )
        if toast.request_id is not None and not toast.final:
            self._request_toasts[toast.request_id] = notification
        self.post_message(Notify(notification))

    # ------------------------------------------------------------------ app-wide actions

    async def action_show_screen(self, name: str) -> None:
        """Number keys: go to the screen named, at its top level. The detail screens open on
        this mode are closed first, so that no mode keeps a stale detail to come back to.
        The schema problem stays up: it leaves by itself once the schema is usable."""
        while len(self.screen_stack) > 1 and self.screen is not self._schema_screen:
            self.pop_screen()
        if self.current_mode != name:
            await self.switch_mode(name)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast, the app's and every screen's, shows its words literally: toasts quote
        reasons, outcomes, names and errors that others wrote. No toast of ours uses markup,
        so `markup` is ignored; control characters are escapes, long text is cut."""
        del markup
        super().notify(
            visible(message),
            title=visible(title, limit=CELL),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def action_help(self) -> None:
        from pipectl.console.screens.help import HelpScreen, scope_of

        screen = self.screen
        scope = scope_of(screen)
        self.push_screen(HelpScreen(self.registry, scope, scope.title()))

    def action_lineage(self) -> None:
        self.push_screen(LineageScreen(lineage_subject(self.screen)))

    def action_reload(self) -> None:
        if not self.connection.connected:
            self.service.retry_now()
            return
        if isinstance(self.screen, DataScreen):
            self.screen.refetch()


HEAP_SETTLE_DELAY = 1.0
"""Seconds after the first data is shown that the heap is settled."""


def settle_heap() -> None:
    """Exempt what is loaded at start (Textual, Rich, asyncpg, these modules: 55,000 objects
    after import alone, living as long as the app) from Python's full collections, which the
    snapshots each screen allocates trigger now and then. In bench.console_queries one landed
    in about 5 % of the 7-day cache screen's fetches, taking them from 12 ms to 40-80 ms (p95
    63-67 ms); with the heap settled that screen's p95 is 11.7 ms. Garbage is collected first,
    so only live objects are frozen."""
    gc.collect()
    gc.freeze()
