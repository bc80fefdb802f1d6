"""Every screen against the seeded incident: what it loads (messages) and shows (widget state),
live updates in place, navigation, filter and sort."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from textual.app import ComposeResult
from textual.screen import ModalScreen
from textual.widgets import Static

from pipectl.console.data import CacheData, ChecksData, OverviewData, TimelineData
from pipectl.console.messages import ConnectionChanged, DatabaseChanged, Loaded
from pipectl.console.screens.cache import CachePanel, CacheScreen
from pipectl.console.screens.checks import CheckScreen, ChecksScreen
from pipectl.console.screens.help import HelpScreen
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.screens.requests import RequestsScreen
from pipectl.console.screens.step import StepScreen
from pipectl.console.screens.timeline import TimelineScreen
from pipectl.console.widgets.header import ScreenTab
from pipectl.console.widgets.table import LiveTable
from pipectl.console.widgets.tiles import Tile
from pipectl.store.console import CheckDetail, StepDetail
from tests.console.conftest import Recorder, console_app, plain, settle
from tests.console.seed import AGENT_ID, NOW

STEP_NAMES = [
    "rule_combinations_rollup",
    "rule_effectiveness_summary",
    "session_cleanup",
    "user_satisfaction_summary",
]


def table_of(app: object) -> LiveTable:
    return app.screen.query_one("#table", LiveTable)  # type: ignore[attr-defined, no-any-return]


def keys(table: LiveTable) -> list[str]:
    return [str(row.key.value) for row in table.ordered_rows]


def cell(table: LiveTable, row: str, column: str) -> str:
    return str(table.get_cell(row, column))


async def test_overview_loads_steps_tiles_and_link(incident: str, recorder: Recorder) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40), message_hook=recorder) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        assert isinstance(app.screen, OverviewScreen)
        table = table_of(app)
        assert keys(table) == STEP_NAMES
        assert cell(table, "session_cleanup", "state") == "✗ failed"
        assert cell(table, "rule_combinations_rollup", "state") == "⏸ paused"
        assert cell(table, "rule_effectiveness_summary", "next") == "in 2m"
        assert "statement timeout" in cell(table, "session_cleanup", "note")
        tiles = {t.id: plain(t) for t in app.screen.query(Tile)}
        assert set(tiles) == {
            "tile-checks",
            "tile-cache-app_cache_hit_ratio",
            "tile-cache-postgres_buffer_hit_ratio",
            "tile-cache-redis_hit_ratio",
            "tile-agents",
        }
        assert "✗1" in tiles["tile-checks"] and "∅1" in tiles["tile-checks"]
        assert tiles["tile-cache-app_cache_hit_ratio"].startswith("62.")
        assert "L1" in tiles["tile-cache-app_cache_hit_ratio"]
        assert "1 alive apes-db-1" in tiles["tile-agents"]
        assert app.screen.query_one("#tile-cache-app_cache_hit_ratio").has_class("-warn")
        # The link came up once; the overview's data arrived as one typed message.
        states = [m.connection.state for m in recorder.of(ConnectionChanged)]
        assert states[:2] == ["connecting", "connected"]
        assert app.connection.user == "postgres" and app.connection.can_write
        loaded = [m for m in recorder.of(Loaded) if isinstance(m.snapshot, OverviewData)]
        assert len(loaded) >= 1
        assert not app.read_only
        assert not app.screen.query_one("#badge").display


async def test_notify_updates_rows_in_place_and_keeps_the_cursor(
    incident: str, recorder: Recorder
) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40), message_hook=recorder) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        table = table_of(app)
        await pilot.press("down", "down")
        assert table.selected_key == "session_cleanup"
        loads_before = len(recorder.of(Loaded))
        conn = await asyncpg.connect(incident)
        try:
            async with conn.transaction():
                for _ in range(3):
                    await conn.execute(
                        "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at,"
                        " finished_at, rows, agent_id)"
                        " VALUES ('session_cleanup', 'manual', 'succeeded', $1, $1,"
                        " $1::timestamptz + interval '2 seconds', 77, $2)",
                        NOW,
                        AGENT_ID,
                    )
        finally:
            await conn.close()
        await settle(pilot, lambda: cell(table, "session_cleanup", "state") == "✓ ok")
        assert cell(table, "session_cleanup", "rows") == "77"
        assert table.selected_key == "session_cleanup", "the cursor stays on its row"
        assert keys(table) == STEP_NAMES
        changes = [m.table for m in recorder.of(DatabaseChanged)]
        assert changes.count("runs") == 3
        # Three NOTIFYs in one burst: one refetch.
        overview_loads = [
            m for m in recorder.of(Loaded)[loads_before:] if isinstance(m.snapshot, OverviewData)
        ]
        assert len(overview_loads) == 1


async def test_number_keys_enter_and_escape_move_between_screens(
    incident: str, recorder: Recorder
) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40), message_hook=recorder) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("2")
        await settle(pilot, lambda: isinstance(app.screen, ChecksScreen) and app.screen.snapshot)
        checks = table_of(app)
        assert checks.row_count == 7
        assert cell(checks, "user_rating_present", "status") == "… nodata (silenced)"
        assert cell(checks, "request_latency_p95", "band") == "≤200"
        assert len(cell(checks, "request_latency_p95", "trend")) == 16
        await pilot.press("3")
        await settle(pilot, lambda: isinstance(app.screen, CacheScreen) and app.screen.snapshot)
        panels = {p.id for p in app.screen.query(CachePanel)}
        assert panels == {
            "cache-app_cache_hit_ratio",
            "cache-postgres_buffer_hit_ratio",
            "cache-redis_hit_ratio",
        }
        await pilot.press("4")
        await settle(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.snapshot)
        timeline = app.screen.snapshot
        assert isinstance(timeline, TimelineData)
        kinds = {e.kind for e in timeline.entries}
        assert {"run", "check.status", "request.rerun", "request.done", "step.paused"} <= kinds
        assert {"cache.dip", "cache.recovered"} <= kinds
        await pilot.press("5")
        await settle(pilot, lambda: isinstance(app.screen, RequestsScreen) and app.screen.snapshot)
        requests = table_of(app)
        assert keys(requests) == ["3", "2", "1"]
        assert cell(requests, "3", "state") == "… queued"
        assert cell(requests, "1", "agent") == "apes-db-1"
        # Enter on a request opens its target; escape comes back.
        await pilot.press("down", "down", "enter")
        await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
        assert app.screen.step == "session_cleanup"
        await pilot.press("escape")
        assert isinstance(app.screen, RequestsScreen)
        await pilot.press("1")
        assert isinstance(app.screen, OverviewScreen)
        screens = {type(m.snapshot) for m in recorder.of(Loaded)}
        assert {OverviewData, ChecksData, CacheData, TimelineData} <= screens


async def test_step_detail_shows_history_error_sql_and_expected_duration(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("down", "down", "enter")
        await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
        screen = app.screen
        assert isinstance(screen, StepScreen)
        detail = screen.snapshot
        assert isinstance(detail, StepDetail)
        assert detail.durations.samples == 22  # the successful runs
        assert detail.last_failure is not None and detail.last_failure.id == 96
        runs = table_of(app)
        assert runs.row_count == 24 and keys(runs)[0] == "96"
        error = screen.query_one("#error")
        assert "statement timeout" in plain(error)
        assert "CONTEXT" in plain(error), "the last error is shown in full"
        assert "Error · run 96" in str(error.border_title)
        assert "DELETE FROM prompt_improvement_sessions" in plain(screen.query_one("#sql"))
        info = plain(screen.query_one("#info"))
        assert "p50 3.0s" in info and "p95 3.5s" in info
        # A highlighted successful run falls back to the last failure; escape goes back.
        await pilot.press("down", "down")
        assert runs.selected_key == "94"
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_check_detail_shows_samples_threshold_and_silence(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("2")
        await settle(pilot, lambda: isinstance(app.screen, ChecksScreen) and app.screen.snapshot)
        table = table_of(app)
        table.move_cursor(row=keys(table).index("user_rating_present"))
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, CheckScreen) and app.screen.snapshot)
        info = plain(app.screen.query_one("#info"))
        assert "until 14:00:00 by bob: feedback form is down (INC-311)" in info
        # The silenced check offers unsilence, not silence.
        active = {b.binding.action for b in app.screen.active_bindings.values()}
        assert "unsilence" in active and "silence" not in active
        await pilot.press("escape")
        table.move_cursor(row=keys(table).index("request_latency_p95"))
        await pilot.press("enter")
        await settle(pilot, lambda: isinstance(app.screen, CheckScreen) and app.screen.snapshot)
        detail = app.screen.snapshot
        assert isinstance(detail, CheckDetail)
        assert len(detail.samples) == 120 and len(detail.results) == 60
        assert "value 120 samples" in plain(app.screen.query_one("#spark-label"))
        assert "warn above     200" in plain(app.screen.query_one("#threshold"))


async def test_filter_and_sort(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        table = table_of(app)
        await pilot.press("slash", *"summary")
        assert keys(table) == ["rule_effectiveness_summary", "user_satisfaction_summary"]
        assert "/summary" in str(table.border_title)
        await pilot.press("enter")
        assert table.has_focus and keys(table) == [
            "rule_effectiveness_summary",
            "user_satisfaction_summary",
        ]
        await pilot.press("slash", "escape")
        assert keys(table) == STEP_NAMES
        await pilot.press("s")  # by step name, ascending
        assert keys(table) == STEP_NAMES
        await pilot.press("S")
        assert keys(table) == list(reversed(STEP_NAMES))
        await pilot.press("s")  # by state: worst first, then reversed
        assert keys(table)[-1] == "session_cleanup"
        assert "by state ↓" in str(table.border_title)


async def test_help_lists_the_registry_for_this_screen(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = plain(app.screen.query_one("#help Static"))
        for label in ("Rerun ⚠", "Rerun+down ⚠", "Pause ⚠", "Resume", "Check now", "Quit"):
            assert label in text
        assert "Silence" not in text, "silence belongs to the checks screens"
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_detail_screens_light_the_tab_they_were_opened_from(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("4")
        await settle(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.snapshot)
        await pilot.press("enter")  # the newest entry: a run of rule_effectiveness_summary
        await settle(pilot, lambda: isinstance(app.screen, StepScreen) and app.screen.snapshot)
        lit = [t.screen_name for t in app.screen.query(ScreenTab) if t.has_class("-active")]
        assert lit == ["timeline"]
        await pilot.click("ScreenTab.tab:last-of-type")  # mouse: the Requests tab
        assert isinstance(app.screen, RequestsScreen)


async def test_a_filter_with_brackets_is_text(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("slash", *"[b")
        assert table_of(app).row_count == 0
        assert "[b" in plain_title(table_of(app))


def plain_title(widget: LiveTable) -> str:
    return str(widget._border_title)


async def test_the_cache_screen_over_seven_days_reads_hourly_buckets(incident: str) -> None:
    """`w` cycles the window; a week comes in whole-hour buckets from the rollup, levels
    included."""
    app = console_app(incident)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        await pilot.press("3")
        await settle(pilot, lambda: isinstance(app.screen, CacheScreen) and app.screen.snapshot)
        for _ in range(2):  # 6 h -> 24 h -> 7 d
            await pilot.press("w")
        await settle(
            pilot,
            lambda: (
                isinstance(app.screen.snapshot, CacheData)
                and app.screen.snapshot.until - app.screen.snapshot.since == timedelta(days=7)
            ),
        )
        snapshot = app.screen.snapshot
        assert isinstance(snapshot, CacheData)
        assert snapshot.bucket == timedelta(hours=2)
        app_cache = next(s for s in snapshot.series if s.check == "app_cache_hit_ratio")
        assert app_cache.points, "an hour of samples shows in the last buckets"
        assert all(p.levels for p in app_cache.points)
        assert {lv.level for p in app_cache.points for lv in p.levels} == {"L1", "L2", "L3"}
        assert sum(p.levels[0].lookups for p in app_cache.points) == 60, "one L1 sample a minute"


async def test_the_age_tick_draws_again_only_when_the_clock_has_moved(incident: str) -> None:
    """Every few seconds a screen draws its snapshot again for the ages it shows; with the
    clock where it was, that would draw the same and lay the screen out again for nothing."""
    now = [NOW]
    app = console_app(incident)
    app.clock = lambda: now[0]
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        screen = app.screen
        assert isinstance(screen, OverviewScreen)
        drawn: list[object] = []
        show = screen.show
        screen.show = lambda snapshot: (drawn.append(snapshot), show(snapshot))  # type: ignore[method-assign]
        screen._tick()
        assert drawn == []
        now[0] = NOW + timedelta(minutes=1)
        screen._tick()
        assert drawn == [screen.snapshot]
        await settle(pilot, lambda: cell(table_of(app), "rule_effectiveness_summary", "next"))
        assert cell(table_of(app), "rule_effectiveness_summary", "next") == "in 1m"
        screen._tick()
        assert len(drawn) == 1


async def _placed_view(incident: str, place_at_once: bool) -> tuple[float, bool]:
    """Open a check's detail at 80x24 (the history table does not fit beside the facts and
    the chart): where the view lands, and whether the whole table is in it."""
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        screen = CheckScreen("request_latency_p95")
        if place_at_once:
            # The worst order of events: the screen's after-refresh callbacks run before
            # any widget given the new content has asked for its layout (each widget is its
            # own task; which runs first is up to the event loop).
            def at_once() -> None:
                screen._to_place = True
                screen._place()

            screen.first_shown = at_once  # type: ignore[method-assign]
        app.push_screen(screen)
        await settle(pilot, lambda: screen.settled)
        await pilot.pause()
        detail = screen.query_one("#detail")
        table = screen.table.region
        view = detail.content_region
        return detail.scroll_y, view.y <= table.y and table.bottom <= view.bottom


async def test_a_detail_places_its_view_on_the_layout_of_its_data(incident: str) -> None:
    """A detail screen scrolls its history table into view once its first data is laid
    out, whatever order the widgets' layouts and the screen's callbacks ran in (CI once
    caught the view placed against the facts' height from before the data arrived)."""
    usual, usual_whole = await _placed_view(incident, place_at_once=False)
    raced, raced_whole = await _placed_view(incident, place_at_once=True)
    assert usual_whole and raced_whole, "the whole history table is in view"
    assert raced == usual > 0


class Cover(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        yield Static("a dialog")


async def test_a_detail_covered_before_its_data_is_placed_when_shown_again(
    incident: str,
) -> None:
    """Covered by a dialog before its first data arrived, a detail screen is not laid out:
    it does not wait for that (retrying on every refresh, it would keep the app busy), and
    places its view when the dialog closes."""
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        screen = CheckScreen("request_latency_p95")
        tries: list[None] = []
        place = screen._place

        def counted() -> None:
            tries.append(None)
            place()

        screen._place = counted  # type: ignore[method-assign]
        app.push_screen(screen)
        app.push_screen(Cover())
        await settle(pilot, lambda: screen.snapshot is not None and not screen._loading)
        await pilot.pause(0.2)
        tried = len(tries)
        await pilot.pause(0.3)
        assert len(tries) == tried, "nothing happens meanwhile: it does not try again"
        assert not screen.settled
        app.pop_screen()
        await settle(pilot, lambda: screen.settled)
        assert screen.query_one("#detail").scroll_y > 0
