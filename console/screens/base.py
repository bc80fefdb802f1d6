"""What every console screen shares: header and footer, registry-driven key checks, and the
load cycle (fetch in a worker, render the snapshot, refetch on change, on return, or slowly).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input

from pipectl.console.live import Change
from pipectl.console.messages import Loaded, LoadFailed
from pipectl.console.service import NotConnected
from pipectl.console.widgets.filter import FilterInput
from pipectl.console.widgets.header import StatusHeader
from pipectl.console.widgets.table import ColumnSpec, LiveTable, Ordering, TableRow
from pipectl.safetext import literal
from pipectl.store.base import Conn

if TYPE_CHECKING:
    from pipectl.console.app import PipectlApp

T = TypeVar("T")

# The slow safety refresh: catches what no NOTIFY announces (agent heartbeats, missed events).
SAFETY_REFRESH = 20.0
# Ages ("42s ago") are re-rendered from the snapshot this often, without a query.
AGE_TICK = 5.0


class ConsoleScreen(Screen[None]):
    """Header, body, footer; which keys work is asked of the action registry."""

    SCOPE: ClassVar[str] = ""

    @property
    def console(self) -> PipectlApp:
        return cast("PipectlApp", self.app)

    def compose(self) -> ComposeResult:
        yield StatusHeader()
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self.console.registry.permits(action):
            return False
        return self.action_state(action)

    def action_state(self, action: str) -> bool | None:
        """Whether an action applies to what is selected now: True, False (hidden) or None
        (shown disabled). Screens override it for context (pause vs resume)."""
        del action
        return True

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()


class DataScreen(ConsoleScreen, Generic[T]):
    """A screen that shows one snapshot type. Loads run one at a time: a change arriving
    mid-load asks for one more load after it, never a parallel one."""

    INTERESTS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: T | None = None
        self.stale = True
        self._loading = False
        self._again = False
        self._safety: Timer | None = None
        self._last_error = ""
        self._shown = False  # a snapshot (None is one: the subject is gone) has been shown
        self._shown_at: datetime | None = None  # the clock when it was last drawn

    async def fetch(self, conn: Conn) -> T:
        raise NotImplementedError

    def show(self, snapshot: T) -> None:
        """Render the snapshot (also called on the age tick, with the same snapshot)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ life cycle

    def on_mount(self) -> None:
        self.console.changes.register(self)
        self.set_interval(AGE_TICK, self._tick)

    def on_unmount(self) -> None:
        self.console.changes.unregister(self)

    def on_screen_resume(self) -> None:
        if self.stale:
            self.reload()

    def _tick(self) -> None:
        """Draw the snapshot again for the ages it shows, when the clock has moved: the same
        snapshot at the same time draws the same, and drawing it again re-lays the screen out
        for nothing (a picture taken meanwhile catches tables whose columns are not measured
        yet: tests pin the clock)."""
        now = self.console.clock()
        if self.snapshot is not None and self.is_current and now != self._shown_at:
            self._shown_at = now
            self.show(self.snapshot)

    # ------------------------------------------------------------------ loading

    def data_changed(self, changes: set[Change]) -> None:
        """Something changed (debounced NOTIFYs): reload now if visible, else when shown.
        An empty set (reconnected) means everything."""
        if not changes or any(self.wants(change) for change in changes):
            self.stale = True
            if self.is_current:
                self.reload()

    def wants(self, change: Change) -> bool:
        """Whether a change can alter what this screen shows (detail screens narrow it)."""
        return change.table in self.INTERESTS

    def refetch(self) -> None:
        """Read again now, whatever the last load was (refresh key, new time window)."""
        self.stale = True
        self.reload()

    def reload(self) -> None:
        if not self.console.connection.connected:
            self.stale = True
            return
        if self._loading:
            self._again = True
            return
        self._loading = True
        self._again = False
        self.stale = False
        self._load(self.fetch)

    @work(exclusive=True, group="load", exit_on_error=False)
    async def _load(self, fetch: Callable[[Conn], Awaitable[T]]) -> None:
        try:
            snapshot = await self.console.service.query(fetch)
        except NotConnected as exc:
            self.post_message(LoadFailed(str(exc), disconnected=True))
        except Exception as exc:
            self.post_message(LoadFailed(f"{type(exc).__name__}: {exc}", disconnected=False))
        else:
            self.post_message(Loaded(snapshot))

    @property
    def settled(self) -> bool:
        """Its data is shown and nothing it asked for is pending (tests wait for this)."""
        return self._shown and not self._loading

    def on_loaded(self, message: Loaded[T]) -> None:
        message.stop()
        self._loading = False
        first = not self._shown
        self._shown = True
        self.snapshot = message.snapshot
        self._last_error = ""
        self._shown_at = self.console.clock()
        self.show(message.snapshot)
        if first:
            self.first_shown()
        self.refresh_bindings()
        self.console.data_shown()
        self._after_load()

    def first_shown(self) -> None:
        """The first snapshot is on screen (a screen may place its view once, here)."""

    def on_load_failed(self, message: LoadFailed) -> None:
        message.stop()
        self._loading = False
        self.stale = True
        if not message.disconnected and message.error != self._last_error:
            self.notify(message.error, title="Could not read", severity="error", markup=False)
        self._last_error = message.error
        self._after_load()

    def _after_load(self) -> None:
        """The next load is scheduled only now that this one ended."""
        if self._again:
            self.reload()
            return
        if self._safety is not None:
            self._safety.stop()
        self._safety = self.set_timer(SAFETY_REFRESH, self._safety_refresh)

    def _safety_refresh(self) -> None:
        self.stale = True
        if self.is_current:
            self.reload()


class TimeWindow:
    """The time windows a screen offers (`w` cycles them); 6 hours to begin with."""

    WINDOWS: ClassVar[tuple[timedelta, ...]] = (
        timedelta(hours=1),
        timedelta(hours=6),
        timedelta(days=1),
        timedelta(days=7),
    )
    window_index = 1

    @property
    def window(self) -> timedelta:
        return self.WINDOWS[self.window_index]

    def next_window(self) -> None:
        self.window_index = (self.window_index + 1) % len(self.WINDOWS)


class TableScreen(DataScreen[T]):
    """A DataScreen around one LiveTable, with filter (`/`) and sort (`s`, `S`)."""

    COLUMNS: ClassVar[tuple[ColumnSpec, ...]] = ()
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = []
    TABLE_TITLE: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.ordering = Ordering()
        self.filter_text = ""

    @property
    def table(self) -> LiveTable:
        return self.query_one("#table", LiveTable)

    def on_mount(self) -> None:
        """The table has the keys, not a scroll container around it. (DataScreen's on_mount
        runs too: Textual calls the handler of every class in the MRO.) Focusing does not
        scroll: Textual would centre the table against a layout whose data has not arrived
        yet, and where the view landed would depend on which came first (a detail screen
        places its view once its data is shown)."""
        self.table.focus(scroll_visible=False)

    def compose_table(self) -> ComposeResult:
        yield LiveTable(self.COLUMNS, id="table")
        yield FilterInput()

    def rows(self, snapshot: T) -> list[TableRow]:
        raise NotImplementedError

    def show_table(self, snapshot: T) -> None:
        rows = [r for r in self.rows(snapshot) if r.matches(self.filter_text)]
        self.table.show(self.ordering.apply(rows))
        self.table.border_title = literal(self._title(len(rows)))  # the filter is not markup

    def table_title(self) -> str:
        return self.TABLE_TITLE

    def _title(self, count: int) -> str:
        parts = [f"{self.table_title()} ({count})"]
        if self.ordering.column is not None:
            arrow = "↓" if self.ordering.reverse else "↑"
            parts.append(f"by {self.COLUMNS[self.ordering.column].label} {arrow}")
        elif self.ordering.reverse:
            parts.append("reversed")
        if self.filter_text:
            parts.append(f"/{self.filter_text}")
        return " · ".join(parts)

    def selected_key(self) -> str | None:
        return self.table.selected_key

    # ------------------------------------------------------------------ filter and sort

    def action_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.display = True
        box.cursor_blink = self.console.cursor_blink
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        if self.snapshot is not None:
            self.show_table(self.snapshot)

    @on(FilterInput.Closed)
    def _filter_closed(self) -> None:
        self.query_one(FilterInput).display = bool(self.filter_text)
        self.table.focus()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Esc clears an applied filter first; without one it is Back (detail screens)."""
        if action == "clear_filter":
            return bool(self.filter_text) and self.console.registry.permits(action)
        return super().check_action(action, parameters)

    def action_back(self) -> None:
        """On a detail screen Esc is Back, but an applied filter is cleared first."""
        if self.filter_text:
            self.action_clear_filter()
            return
        super().action_back()

    def action_clear_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.value = ""
        self.filter_text = ""
        box.display = False
        if self.snapshot is not None:
            self.show_table(self.snapshot)
        self.table.focus()
        self.refresh_bindings()

    def action_sort(self) -> None:
        self.ordering = self.ordering.next(self.COLUMNS)
        self._resort()

    def action_reverse(self) -> None:
        self.ordering = Ordering(self.ordering.column, not self.ordering.reverse)
        self._resort()

    def _resort(self) -> None:
        if self.snapshot is not None:
            self.show_table(self.snapshot)

    # ------------------------------------------------------------------ selection

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected)
    async def _selected(self) -> None:
        await self.run_action("open")

    def action_open(self) -> None:
        """Open the selected row's detail (screens with details override this)."""
