"""SVG snapshots of the main screens at 80x24 and 160x48, on the seeded incident; and of the
Overview healthy, with one incident, with a stalled feed (several not-ok items, one incident),
and with a step failing on a lock.

Each variant has its own database, named per session (two sessions on one server must not
drop each other's); the header shows it under its stable name (`shown_as`), the clock is the
incident's NOW, the cursor does not blink; colours are on (one snapshot checks NO_COLOR)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from pipectl.console.screens.base import DataScreen
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.widgets.incidents import IncidentsPanel
from pipectl.durations import parse_duration
from tests.conftest import PgServer
from tests.console.conftest import console_app, plain, settle
from tests.console.seed import AGENT_ID, NOW, seed
from tests.console.test_overview import fail_on_a_lock
from tests.helpers import dsn_for

SNAPSHOT_DB = "pipectl_console_snapshots"
SESSION = uuid.uuid4().hex[:8]
"""The suffix of this session's snapshot databases: not shown (`shown_as`)."""
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


# The seeded incident made healthy: every run succeeded, nothing paused or silenced, every
# check ok, the app cache above its target.
HEALTHY = """
UPDATE pipectl.runs SET status = 'succeeded', error = NULL, rows = 100 WHERE status = 'failed';
DELETE FROM pipectl.runs WHERE status = 'skipped';
UPDATE pipectl.steps SET paused = false, paused_by = NULL, paused_at = NULL, paused_reason = NULL;
UPDATE pipectl.checks SET status = 'ok', silenced_until = NULL, silenced_by = NULL,
    silence_reason = NULL;
UPDATE pipectl.check_results SET status = 'ok';
UPDATE pipectl.check_results SET value = greatest(value, 0.84)
    WHERE check_name = 'app_cache_hit_ratio';
UPDATE pipectl.samples SET value = greatest(value, 0.84) WHERE series = 'app_cache_hit_ratio';
DELETE FROM pipectl.samples_hourly;
INSERT INTO pipectl.samples_hourly (series, hour, n, total)
    SELECT series, date_trunc('hour', ts, 'UTC'), count(*), sum(value)
    FROM pipectl.samples GROUP BY 1, 2;
"""


def shown_as(dsn: str) -> str:
    """Where the header says the console is: host/database, without the session's suffix, so
    the pictures are the same whichever session took them."""
    parts = urlsplit(dsn)
    return f"{parts.hostname}{parts.path.removesuffix(f'_{SESSION}')}"


async def _snapshot_db(
    pg_server: PgServer, template: str, stable: str, then: Callable[[str], Awaitable[None]]
) -> AsyncIterator[str]:
    """A database of the seeded incident, changed by `then`, for the module: `stable` (what
    the header shows) with this session's suffix; dropped at the end."""
    name = f"{stable}_{SESSION}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    dsn = dsn_for(pg_server.dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await seed(conn)
    finally:
        await conn.close()
    await then(dsn)
    yield dsn
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _as_seeded(dsn: str) -> None:
    del dsn


async def _healthy(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(HEALTHY)
    finally:
        await conn.close()


# What the agent publishes as each seeded check's definition (its config's model_dump): the
# relation it watches (`table`) and, for a freshness check of a summary, the step that
# refreshes it. Lineage reads these to group failing checks by root cause; the seed itself
# publishes `{}` (every failing check its own incident).
DEFINITIONS: dict[str, dict[str, Any]] = {
    "rule_performance_freshness": {"kind": "freshness", "table": "public.rule_performance",
                                   "column": "created_at", "warn_after": "15m",
                                   "error_after": "1h"},
    "request_latency_p95": {"kind": "metric", "table": "public.prompt_improvement_sessions",
                            "time_column": "created_at", "aggregate": "p95",
                            "column": "response_time_ms"},
    "avg_improvement_score": {"kind": "metric", "table": "public.rule_performance",
                              "time_column": "created_at", "aggregate": "avg",
                              "column": "improvement_score"},
    "redis_hit_ratio": {"kind": "cache", "source": "redis"},
    "app_cache_hit_ratio": {"kind": "cache", "source": "app",
                            "table": "public.prompt_improvement_sessions"},
    "postgres_buffer_hit_ratio": {"kind": "cache", "source": "postgres"},
    "user_rating_present": {"kind": "quality", "table": "public.user_feedback",
                            "rule": {"type": "not_null", "column": "user_rating"}},
}  # fmt: skip

# The user_feedback feed stalled: its newest row is from 09:12. Its freshness check fails
# (error after 2h: since 11:12), its volume check warns, and the summary built on it is stale,
# its own freshness check (tied to its refresh step) failing too.
# name, kind, target, status, minutes since, value, message, definition
STALLED = [
    ("user_feedback_freshness", "freshness", "public.user_feedback", "fail", 48, 10050.0,
     "newest row 2h 48m old (error after 2h)",
     {"kind": "freshness", "table": "public.user_feedback", "column": "created_at",
      "warn_after": "30m", "error_after": "2h"}),
    ("user_feedback_volume", "volume", "public.user_feedback", "warn", 108, 0.0,
     "0 rows in the last hour, below 40",
     {"kind": "volume", "table": "public.user_feedback", "column": "created_at",
      "window": "1h", "bounds": {"warn_below": 40}}),
    ("user_satisfaction_summary_fresh", "freshness", "public.user_satisfaction_summary", "fail",
     30, 10050.0, "newest feedback 2h 48m old (error after 2h)",
     {"kind": "freshness", "table": "public.user_satisfaction_summary",
      "column": "feedback_date", "step": "user_satisfaction_summary", "warn_after": "30m",
      "error_after": "2h"}),
]  # fmt: skip


async def _publish_definitions(conn: asyncpg.Connection) -> None:
    await conn.executemany(
        "UPDATE pipectl.checks SET definition = $2 WHERE name = $1",
        [(name, json.dumps(definition)) for name, definition in DEFINITIONS.items()],
    )


async def _one_incident(dsn: str) -> None:
    """Healthy, but for one failing metric on `rule_performance`: one incident."""
    await _healthy(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await _publish_definitions(conn)
        since = NOW - timedelta(minutes=35)
        await conn.execute(
            "UPDATE pipectl.checks SET status = 'fail', status_since = $1"
            " WHERE name = 'avg_improvement_score'",
            since,
        )
        await conn.execute(
            "UPDATE pipectl.check_results SET status = 'fail'"
            " WHERE check_name = 'avg_improvement_score' AND observed_at >= $1",
            since,
        )
    finally:
        await conn.close()


def _expected(definition: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """The bounds and threshold a result carries, as the freshness and volume kinds write
    them (a freshness check's limit, shown in Input freshness, is its warn_after)."""
    if definition["kind"] == "freshness":
        warn, error = (parse_duration(definition[k]).total_seconds() for k in
                       ("warn_after", "error_after"))  # fmt: skip
        return 0.0, warn, json.dumps({"warn_after_s": warn, "error_after_s": error})
    bounds = definition["bounds"]
    return bounds["warn_below"], None, json.dumps(bounds)


async def _stalled_feed(dsn: str) -> None:
    """Healthy, but for the stalled user_feedback feed: three failing checks and a stale
    summary, one incident rooted at `user_feedback`."""
    await _healthy(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await _publish_definitions(conn)
        await conn.executemany(
            "INSERT INTO pipectl.checks (name, kind, target, schedule, status, status_since,"
            " last_value, last_result_at, definition, published_by)"
            " VALUES ($1, $2, $3, 'every 1m', $4, $5, $6, $7, $8, $9)",
            [
                (name, kind, target, status, NOW - timedelta(minutes=minutes), value,
                 NOW - timedelta(seconds=30), json.dumps(definition), AGENT_ID)
                for name, kind, target, status, minutes, value, _m, definition in STALLED
            ],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO pipectl.check_results (check_name, status, value, expected_low,"
            " expected_high, threshold, message, observed_at, agent_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                (name, status, value, *_expected(definition), message,
                 NOW - timedelta(seconds=30), AGENT_ID)
                for name, _k, _t, status, _min, value, message, definition in STALLED
            ],
        )  # fmt: skip
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def snapshot_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    async for dsn in _snapshot_db(pg_server, template_database, SNAPSHOT_DB, _as_seeded):
        yield dsn


@pytest.fixture(scope="module")
async def healthy_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"{SNAPSHOT_DB}_healthy"
    async for dsn in _snapshot_db(pg_server, template_database, name, _healthy):
        yield dsn


@pytest.fixture(scope="module")
async def lock_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"{SNAPSHOT_DB}_lock"
    async for dsn in _snapshot_db(pg_server, template_database, name, fail_on_a_lock):
        yield dsn


@pytest.fixture(scope="module")
async def one_incident_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"{SNAPSHOT_DB}_one_incident"
    async for dsn in _snapshot_db(pg_server, template_database, name, _one_incident):
        yield dsn


@pytest.fixture(scope="module")
async def stalled_db(pg_server: PgServer, template_database: str) -> AsyncIterator[str]:
    name = f"{SNAPSHOT_DB}_stalled_feed"
    async for dsn in _snapshot_db(pg_server, template_database, name, _stalled_feed):
        yield dsn


@pytest.fixture
def colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)


def loaded(*keys: str) -> Callable[[Pilot[Any]], Any]:
    """Press keys one at a time, each time waiting for the screen it leads to to be loaded."""

    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot, lambda: _ready(pilot))
        for key in keys:
            await pilot.press(key)
            await settle(pilot, lambda: _ready(pilot))
        # A key that moves the cursor scrolls the table smoothly: the picture is taken once
        # the scroll has arrived, not halfway (a scrollbar thumb between two rows).
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()

    return run


def _ready(pilot: Pilot[Any]) -> bool:
    """Connected, every screen on the stack loaded and no worker busy: a dialog opens at once,
    but the screen behind it may still be showing what the last key asked for (its scrollbar
    is in the picture)."""
    app = pilot.app
    # Connecting refetches every screen (ChangeRouter.everything): before that, a screen may
    # be redrawn under the picture.
    if not app.connection.connected or app.changes._timer is not None:
        return False
    if any(w.group != "connection" and not w.is_finished for w in app.workers):
        return False
    return all(
        screen.settled for screen in app.screen_stack if isinstance(screen, DataScreen)
    ) and _tables_measured(pilot)


def _tables_measured(pilot: Pilot[Any]) -> bool:
    """Every table has measured the rows it was given: a DataTable sizes its columns to
    their cells when its message queue is next empty (on Idle), so a picture taken before
    shows every column at its header's width (CI saw the Requests screen so, once)."""
    return not any(
        table._require_update_dimensions or table._updated_cells
        for screen in pilot.app.screen_stack
        for table in screen.query(DataTable)
    )


def snap(
    snap_compare: Any, dsn: str, size: tuple[int, int], keys: Iterable[str] = (), **kw: Any
) -> bool:
    app = console_app(dsn, **kw)
    app.sub_title = shown_as(dsn)
    return bool(snap_compare(app, terminal_size=size, run_before=loaded(*keys)))


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_healthy(snap_compare: Any, healthy_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, healthy_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_step_failing_on_a_lock(
    snap_compare: Any, lock_db: str, size: tuple[int, int]
) -> None:
    """A step whose retries keep failing on a lock: red, with the attempt and the error."""
    assert snap(snap_compare, lock_db, size, ["down", "down"])


async def _panel(dsn: str, size: tuple[int, int]) -> tuple[IncidentsPanel, str]:
    """The Overview's incidents panel once its snapshot (with lineage) is shown, and its text."""
    app = console_app(dsn)
    async with app.run_test(size=size) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, OverviewScreen) and _ready(pilot))
        shown = app.screen.query_one(IncidentsPanel)
        return shown, plain(shown)


@pytest.mark.parametrize("size", SIZES)
async def test_overview_one_incident_content(one_incident_db: str, size: tuple[int, int]) -> None:
    """One failing metric on rule_performance: one incident rooted at the table, the summary
    built on it stale."""
    shown, text = await _panel(one_incident_db, size)
    assert [i.root for i in shown.incidents] == ["rule_performance"]
    assert shown.border_title == "Incidents (1)"
    incident = shown.incidents[0]
    assert incident.root_kind == "table"
    assert incident.since == NOW - timedelta(minutes=35)
    assert {(m.name, m.status) for m in incident.members} == {
        ("avg_improvement_score", "fail"),
        ("public.rule_effectiveness_summary", "stale"),
    }
    assert "▶ ✗ rule_performance (table)  since 35m ago" in text
    assert "not ok: avg_improvement_score fail, rule_effectiveness_summary stale" in text


@pytest.mark.parametrize("size", SIZES)
async def test_overview_stalled_feed_content(stalled_db: str, size: tuple[int, int]) -> None:
    """A stalled feed: three failing checks and a stale summary are ONE incident, its root
    the input table, since when its freshness failed, what it impacts."""
    shown, text = await _panel(stalled_db, size)
    assert [i.root for i in shown.incidents] == ["user_feedback"]
    assert shown.border_title == "Incidents (1)"
    incident = shown.incidents[0]
    assert incident.root_kind == "table"
    assert incident.since == NOW - timedelta(minutes=108)
    assert sorted((m.type, m.short) for m in incident.members) == [
        ("check", "user_feedback_freshness"),
        ("check", "user_feedback_volume"),
        ("check", "user_satisfaction_summary_fresh"),
        ("relation", "user_satisfaction_summary"),
    ]
    assert "user_satisfaction_summary" in [i.short for i in incident.impacts]
    assert "▶ ✗ user_feedback (table)  since 1.8h ago" in text
    assert "`user_feedback` stopped receiving rows at 09:12 (freshness failing since 11:12)" in text
    assert "not ok: user_feedback_freshness fail, 2 more checks, user_satisfaction_summary" in text
    assert "; has user_feedback_volume warning since 10:12 (0 rows in the last hour, below 40)" in (
        text
    )
    assert "downstream, ok so far: user_rating_present" in text
    assert "x rerun user_satisfaction_summary+down · z silence user_feedback_freshness" in text


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_one_incident(
    snap_compare: Any, one_incident_db: str, size: tuple[int, int]
) -> None:
    assert snap(snap_compare, one_incident_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_overview_stalled_feed(snap_compare: Any, stalled_db: str, size: tuple[int, int]) -> None:
    """Three failing checks and a stale summary, one incident: the feed they all read."""
    assert snap(snap_compare, stalled_db, size)


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_step_detail(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["down", "down", "enter"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_checks(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["2"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_check_detail(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["2", "down", "down", "down", "down", "enter"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_cache(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["3", "w"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_timeline(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["4"])


@pytest.mark.usefixtures("colours")
@pytest.mark.parametrize("size", SIZES)
def test_requests(snap_compare: Any, snapshot_db: str, size: tuple[int, int]) -> None:
    assert snap(snap_compare, snapshot_db, size, ["5"])


@pytest.mark.usefixtures("colours")
def test_rerun_downstream_dialog(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["down", "R"])


@pytest.mark.usefixtures("colours")
def test_silence_dialog(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["2", "down", "m"])


@pytest.mark.usefixtures("colours")
def test_help(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), ["question_mark"])


@pytest.mark.usefixtures("colours")
def test_read_only_overview(snap_compare: Any, snapshot_db: str) -> None:
    assert snap(snap_compare, snapshot_db, (80, 24), read_only=True)


def test_overview_no_color(snap_compare: Any, snapshot_db: str) -> None:
    """NO_COLOR (set by the test environment): marks carry the state, not colours."""
    assert snap(snap_compare, snapshot_db, (80, 24))
