"""The console's parts on their own: the action registry, the in-place table, the debouncer,
the request feedback, the chart maths."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from textual.app import App, ComposeResult

from pipectl.console.actions import ACTIONS, APP, TABLE_SCREENS, ActionRegistry, bindings
from pipectl.console.app import PipectlApp
from pipectl.console.data import RequestIntent
from pipectl.console.live import Change, ChangeRouter, RequestFeedback
from pipectl.console.screens.cache import CacheScreen
from pipectl.console.screens.checks import CheckScreen, ChecksScreen
from pipectl.console.screens.dialogs import Dialog
from pipectl.console.screens.operations import CheckOperations, StepOperations
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.screens.requests import RequestsScreen
from pipectl.console.screens.schema import SchemaScreen
from pipectl.console.screens.step import StepScreen
from pipectl.console.screens.timeline import TimelineScreen
from pipectl.console.widgets.chart import RatioSeries, bars, columns_of, floor_of
from pipectl.console.widgets.table import ColumnSpec, LiveTable, Ordering, TableRow
from pipectl.format import band, spark
from pipectl.model import Outcome, Request, RequestKind
from pipectl.store.console import RequestRow

SCREENS = [
    OverviewScreen,
    StepScreen,
    ChecksScreen,
    CheckScreen,
    CacheScreen,
    TimelineScreen,
    RequestsScreen,
]


def test_every_binding_comes_from_the_registry_and_has_a_handler() -> None:
    registered = {(s.key, s.action) for s in ACTIONS}
    owners: list[Any] = [PipectlApp, *SCREENS, Dialog, SchemaScreen]
    for owner in owners:
        for binding in owner.BINDINGS:
            assert (binding.key, binding.action) in registered, (owner, binding)
    for spec in ACTIONS:
        handlers = [o for o in owners if hasattr(o, f"action_{spec.name}")]
        assert handlers or spec.name == "quit", f"no handler for {spec.action}"


def test_every_screen_with_step_or_check_actions_says_what_is_selected() -> None:
    """The base getters are abstract: a screen offering step (check) actions tells which step
    (check) it has selected, so `l` (lineage_subject) and the actions may simply ask it."""
    for screen in SCREENS:
        if issubclass(screen, StepOperations):
            assert screen.selected_step is not StepOperations.selected_step, screen
        if issubclass(screen, CheckOperations):
            assert screen.selected_check is not CheckOperations.selected_check, screen


def test_keys_are_unique_per_screen_except_toggle_pairs() -> None:
    for scope in {s for spec in ACTIONS for s in spec.scopes}:
        keys = Counter(s.key for s in ACTIONS if scope in s.scopes)
        doubled = {k for k, n in keys.items() if n > 1}
        pairs = {frozenset(s.name for s in ACTIONS if scope in s.scopes and s.key == k)
                 for k in doubled}  # fmt: skip
        # Esc on a detail screen: an applied filter is cleared first, then it goes back.
        assert pairs <= {
            frozenset({"pause", "resume"}),
            frozenset({"silence", "unsilence"}),
            frozenset({"back", "clear_filter"}),
        }


def test_read_only_filters_the_registry() -> None:
    full = ActionRegistry()
    read_only = ActionRegistry(read_only=True)
    writes = {s.name for s in ACTIONS if s.needs_write}
    assert writes == {"rerun", "rerun_downstream", "publish", "pause", "resume", "check_now",
                      "silence", "unsilence", "incident_rerun", "incident_silence"}  # fmt: skip
    assert {s.name for s in read_only.hidden()} == writes
    assert all(not read_only.permits(w) for w in writes)
    assert all(full.permits(w) for w in writes)
    assert read_only.permits("show_screen") and read_only.permits("not_registered")
    assert all(s.dangerous <= s.needs_write for s in ACTIONS), "dangerous implies a write"
    assert [s.name for s in read_only.for_scope("overview")] == [
        "open",
        "incident_why",
        "incident_next",
        "filter",
        "clear_filter",
        "sort",
        "reverse",
    ]
    assert {b.key for b in bindings(APP)} >= {"1", "2", "3", "4", "5", "q", "question_mark"}
    assert all("filter" in {s.name for s in full.for_scope(scope)} for scope in TABLE_SCREENS)


def row(key: str, value: str) -> TableRow:
    return TableRow(key, (key, value), (key, value))


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LiveTable([ColumnSpec("k", "key"), ColumnSpec("v", "value")], id="table")


async def test_live_table_updates_in_place_and_follows_its_row() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(LiveTable)
        table.show([row("a", "1"), row("b", "2"), row("c", "3")])
        await pilot.pause()
        table.move_cursor(row=1)
        table.show([row("a", "1"), row("b", "20"), row("c", "3"), row("d", "4")])
        assert table.selected_key == "b" and str(table.get_cell("b", "v")) == "20"
        table.show([row("z", "0"), row("a", "1"), row("b", "20"), row("d", "4")])
        assert [r.key.value for r in table.ordered_rows] == ["z", "a", "b", "d"]
        assert table.selected_key == "b", "a reorder keeps the cursor on its row"
        table.show([row("z", "0")])
        assert table.row_count == 1 and table.selected_key == "z"


def test_ordering_cycles_sortable_columns_and_puts_none_last() -> None:
    columns = [ColumnSpec("a", "a"), ColumnSpec("b", "b", sortable=False), ColumnSpec("c", "c")]
    first = Ordering().next(columns)
    assert first.column == 0 and first.next(columns).column == 2
    assert first.next(columns).next(columns).column is None
    rows = [TableRow("x", (), (None,)), TableRow("y", (), (2,)), TableRow("z", (), (1,))]
    assert [r.key for r in Ordering(0).apply(rows)] == ["z", "y", "x"]


class FakeTimer:
    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


class Screen:
    def __init__(self) -> None:
        self.calls: list[set[Change]] = []

    def data_changed(self, changes: set[Change]) -> None:
        self.calls.append(changes)


def test_change_router_debounces_a_burst_into_one_refresh() -> None:
    timers: list[FakeTimer] = []

    def set_timer(_delay: float, callback: Any) -> FakeTimer:
        timers.append(FakeTimer(callback))
        return timers[-1]

    router = ChangeRouter(set_timer)
    screen = Screen()
    router.register(screen)
    payloads = [
        ("runs", {"table": "runs", "id": 1, "step": "a", "status": "running"}),
        ("runs", {"table": "runs", "id": 1, "step": "a", "status": "succeeded"}),
        ("requests", {"table": "requests", "id": 3, "target": "a", "state": "claimed"}),
        ("checks", {"table": "checks", "name": "c"}),
        ("requests", {"id": 3}),
    ]
    for table, payload in payloads:
        router.changed(Change.of(table, payload))
    assert len(timers) == 1 and screen.calls == []
    timers[0].callback()
    assert screen.calls == [
        {
            Change("runs", "a"),
            Change("requests", "a"),
            Change("checks", "c"),
            Change("requests", None),
        }
    ]
    router.everything()
    assert screen.calls[-1] == set()


def request(**changes: Any) -> Request:
    base: dict[str, Any] = {
        "id": 7,
        "kind": RequestKind.RERUN,
        "target": "s",
        "args": {},
        "reason": "why",
        "requested_by": "me",
        "created_at": datetime(2025, 1, 1, tzinfo=UTC),
    }
    return Request(**{**base, **changes})


def test_request_feedback_tells_each_state_once_in_any_order() -> None:
    feedback = RequestFeedback()
    created = datetime(2025, 1, 1, tzinfo=UTC)
    filed = feedback.filed(RequestIntent("rerun", "s", "why", summary="s → t"), request())
    assert filed.title == "Request 7 filed" and filed.message == "rerun s → t — why"
    claimed = request(claimed_at=created, claimed_by=None)
    assert [t.title for t in feedback.progress(RequestRow(claimed, "a1"))] == [
        "Request 7 claimed by a1"
    ]
    assert feedback.progress(RequestRow(claimed, "a1")) == []
    done = request(
        claimed_at=created,
        done_at=created + timedelta(seconds=2),
        outcome=Outcome.FAILED,
        detail="s failed",
    )
    toasts = feedback.progress(RequestRow(done, "a1"))
    assert [(t.title, t.severity) for t in toasts] == [("Request 7 failed in 2.0s by a1", "error")]
    assert not feedback.is_mine(7) and feedback.progress(RequestRow(done, "a1")) == []
    # Someone else's request: nothing to say.
    assert RequestFeedback().progress(RequestRow(done, "a1")) == []


def test_text_forms() -> None:
    assert spark([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert spark([5, 5, 5], 10) == "▄▄▄"
    assert spark([1, 2, 3], 2) == "▁█"
    assert spark([], 5) == ""
    assert band(0.8, None) == "≥0.8" and band(None, 200) == "≤200" and band(1, 2) == "1..2"


def test_chart_columns_and_floor() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    end = start + timedelta(hours=1)
    minute = timedelta(minutes=1)
    points = tuple((start + m * minute, 0.9 if m < 30 else 0.6) for m in range(60))
    series = RatioSeries(start, end, minute, points, 0.8, 0.5)
    columns = columns_of(start, end, minute, points, 4)
    assert [round(c or 0, 6) for c in columns] == [0.9, 0.9, 0.6, 0.6]
    assert floor_of(series) == 0.4
    assert columns_of(start, end, minute, points, 0) == []
    # More columns than points: a column between two points shows the one before it; a gap
    # longer than a bucket stays empty.
    sparse = ((start, 0.5), (start + 10 * minute, 0.7), (start + 40 * minute, 0.9))
    wide = columns_of(start, end, 10 * minute, sparse, 12)
    assert wide[:4] == [0.5, 0.5, 0.7, 0.7]
    assert wide[4:8] == [None] * 4 and wide[8:10] == [0.9, 0.9] and wide[10:] == [None] * 2
    assert bars([0.0, 0.5, 0.99, None]) == "▁▅█ "


async def test_live_table_shows_brackets_as_text() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(LiveTable)
        table.show([row("a", "[bold]not markup[/"), row("b", "[red")])
        await pilot.pause()
        assert str(table.get_cell("a", "v")) == "[bold]not markup[/"
        table.show([row("a", "[/]"), row("b", "[red")])
        assert str(table.get_cell("a", "v")) == "[/]"
