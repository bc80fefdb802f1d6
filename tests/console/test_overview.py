"""The Overview read in five seconds: a step that keeps failing is red and says why, counts
have words and a legend, silenced checks are not counted as failing, and a wide terminal shows
the last hours. Against the seeded incident, with the clock at its NOW."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
from textual.widgets._footer import FooterKey

from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.widgets.overtime import Drawn
from pipectl.console.widgets.tiles import Tile
from pipectl.model import Run, RunStatus, Trigger
from pipectl.store.console import StepHealth, step_health
from pipectl.store.views import StepRow, status_snapshot
from tests.console.conftest import console_app, plain, settle
from tests.console.seed import AGENT_ID, NOW
from tests.console.test_screens import cell, table_of


def drawn(widget: Drawn) -> str:
    """What a Drawn widget shows at the width it has."""
    return widget.render().plain


LOCK_ERROR = "lock not available within lock_timeout (10s) (transient, will retry)"


async def fail_on_a_lock(dsn: str, step: str = "session_cleanup") -> None:
    """Two attempts of `step` failed on a lock; the third (its retry) is queued, as the agent
    leaves it while it waits out the backoff. The agent allows 3 retries."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE pipectl.steps SET definition = $2 WHERE name = $1",
            step,
            json.dumps({"effective": {"retries": 3}}),
        )
        for attempt, minutes in ((1, 3), (2, 2)):
            start = NOW - timedelta(minutes=minutes)
            await conn.execute(
                "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at,"
                " finished_at, error, attempt, agent_id)"
                " VALUES ($1, $2, 'failed', $3, $3, $4, $5, $6, $7)",
                step,
                "schedule" if attempt == 1 else "retry",
                start,
                start + timedelta(seconds=10),
                LOCK_ERROR,
                attempt,
                AGENT_ID,
            )
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, queued_at, attempt, agent_id)"
            " VALUES ($1, 'retry', 'queued', $2, 3, $3)",
            step,
            NOW - timedelta(minutes=1),
            AGENT_ID,
        )
    finally:
        await conn.close()


async def test_a_step_failing_on_a_lock_stays_red_and_says_why(incident: str) -> None:
    await fail_on_a_lock(incident)
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        table = table_of(app)
        # Its retry is queued: by state_run alone it would read "running".
        assert cell(table, "session_cleanup", "state") == "✗ failing"
        note = cell(table, "session_cleanup", "note")
        assert note.startswith("attempt 3 of 4 queued · failed 4 times since its last success")
        assert "lock not available within lock_timeout" in note
        # At 80 columns the note column is cut: the highlighted step's note is shown whole.
        table.move_cursor(row=table.get_row_index("session_cleanup"))
        await pilot.pause()
        shown = plain(app.screen.query_one("#step-note"), width=78)
        assert "session_cleanup: attempt 3 of 4 queued" in shown
        assert "lock not available within lock_timeout (10s)" in " ".join(shown.split())
        # Failing sorts with the failures (state column, worst first).
        await pilot.press("s", "s")
        assert "by state" in str(table.border_title)
        assert str(table.ordered_rows[0].key.value) == "session_cleanup"


async def test_step_health_counts_failures_since_the_last_success(incident: str) -> None:
    await fail_on_a_lock(incident)
    conn = await asyncpg.connect(incident)
    try:
        rows = {s.name: s for s in (await status_snapshot(conn)).steps}
        health = await step_health(conn, ["session_cleanup", "rule_effectiveness_summary"])
    finally:
        await conn.close()
    failing, row = health["session_cleanup"], rows["session_cleanup"]
    assert row.state == "failing" and row.state_run and row.state_run.attempt == 3
    assert failing.attempts == 4
    # The two seeded timeouts, then the two lock failures.
    assert failing.failures == 4
    ok = health["rule_effectiveness_summary"]
    assert ok.failures == 0 and ok.note(rows["rule_effectiveness_summary"]) == ""


def step_row(state: Run, decisive: Run | None = None) -> StepRow:
    return StepRow(
        "s", "sql", None, None, (), False, None, None, None, state, None, state, decisive
    )


def test_a_skipped_step_names_who_held_its_lock() -> None:
    skip = Run(1, "s", Trigger.SCHEDULE, RunStatus.SKIPPED, NOW)
    skipped = StepHealth("s", 3, 0, "already running elsewhere", "pid 42 (agent b)")
    assert skipped.note(step_row(skip)) == "skipped: lock held by pid 42 (agent b)"
    failed = Run(1, "s", Trigger.SCHEDULE, RunStatus.FAILED, NOW, error="boom\nCONTEXT: x")
    retry = Run(2, "s", Trigger.RETRY, RunStatus.RUNNING, NOW, attempt=2)
    unknown = StepHealth("s", None, 1)
    assert step_row(retry, failed).state == "failing"
    assert unknown.note(step_row(retry, failed)) == "attempt 2 running · last attempt failed · boom"


async def test_checks_tile_has_words_and_leaves_silenced_checks_out(incident: str) -> None:
    conn = await asyncpg.connect(incident)
    try:
        # The failing check is silenced: it is counted as silenced, not as failing.
        await conn.execute(
            "UPDATE pipectl.checks SET silenced_until = $1, silenced_by = 'alice'"
            " WHERE name = 'avg_improvement_score'",
            NOW + timedelta(hours=1),
        )
    finally:
        await conn.close()
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        tile = app.screen.query_one("#tile-checks", Tile)
        text = plain(tile)
        assert "fail" not in text
        assert "!2 warn" in text and "✓3 ok" in text and "∅2 silenced" in text
        assert tile.has_class("-warn") and not tile.has_class("-fail")
        legend = plain(app.screen.query_one("#legend"))
        for words in ("✓ ok", "! warn", "✗ fail", "⚠ error", "… no data", "∅ silenced"):
            assert words in legend
        # The incidents panel's place is first, above the tiles (empty, it takes no room).
        body = [w.id for w in app.screen.children if w.id]
        assert body.index("incidents") < body.index("tiles") < body.index("table")


async def test_footer_keeps_quit_and_help_at_80_columns(incident: str) -> None:
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        for screen_key in ("1", "2", "3", "4", "5"):
            await pilot.press(screen_key)
            await settle(pilot, lambda: getattr(app.screen, "snapshot", None) is not None)
            await pilot.pause()
            regions = {key.description: key.region for key in app.screen.query(FooterKey)}
            for label in ("Quit", "Help"):
                region = regions[label]
                assert region.width > 0 and region.right <= 80, (screen_key, label, region)


async def test_wide_overview_draws_the_last_hours(incident: str) -> None:
    await fail_on_a_lock(incident)
    app = console_app(incident)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(
            pilot,
            lambda: (
                isinstance(app.screen, OverviewScreen)
                and app.screen.snapshot is not None
                and app.screen.snapshot.spans
            ),
        )
        await pilot.pause()
        strips = drawn(app.screen.query_one("#strips", Drawn)).splitlines()
        cleanup = next(line for line in strips if line.startswith("session_cleanup"))
        # Its failures are marked up to now (a failure outranks the queued retry beside it).
        assert cleanup.rstrip().endswith("█")
        effective = next(line for line in strips if line.startswith("rule_effectiveness"))
        assert "█" not in effective and "▌" in effective
        assert any("╵11:00" in line for line in strips), "a time axis"
        cache = drawn(app.screen.query_one("#cache-hours", Drawn))
        assert "App cache" in cache and "62%" in cache and "L1" in cache
        fresh = drawn(app.screen.query_one("#freshness", Drawn))
        assert "rule_performance" in fresh and "limit 15m" in fresh


async def test_narrow_overview_reads_no_hours_until_it_grows(incident: str) -> None:
    """At 80 columns the hours are not drawn, so not read either."""
    app = console_app(incident)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: table_of(app).row_count == 4)
        snapshot = app.screen.snapshot  # type: ignore[attr-defined]
        assert snapshot.spans == {} and snapshot.cache_history == ()
        assert not app.screen.query_one("#hours").display
        # Grown wide, it reads and draws them.
        await pilot.resize_terminal(160, 48)
        await settle(pilot, lambda: app.screen.snapshot.spans)  # type: ignore[attr-defined]
        await pilot.pause()
        assert app.screen.query_one("#hours").display
