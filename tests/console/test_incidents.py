"""The Overview shows incidents first (issue 15 §2-3): one incident for a stalled feed with
its root cause, since when, what it impacts and the keys to act; "Healthy" otherwise. The
lineage screen opens on an incident's root (`i`) or on the selected step (`l`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import asyncpg

from pipectl.console.app import PipectlApp
from pipectl.console.screens.dialogs import RerunDialog, SilenceDialog
from pipectl.console.screens.lineage import LineageScreen
from pipectl.console.screens.overview import OverviewScreen
from pipectl.console.service import ConsoleService
from pipectl.console.widgets.incidents import IncidentsPanel
from tests.console.conftest import plain, settle
from tests.helpers import make_config
from tests.test_lineage import CHAINS, NOW, publish


def app_at(dsn: str, now: datetime, *, read_only: bool = False) -> PipectlApp:
    config = make_config(dsn)
    return PipectlApp(
        config,
        read_only=read_only,
        clock=lambda: now,
        cursor_blink=False,
        service=ConsoleService(config, keepalive=1.0, backoff=(0.2, 1.0)),
    )


def panel(app: PipectlApp) -> IncidentsPanel:
    return app.screen.query_one(IncidentsPanel)


def loaded(app: PipectlApp) -> bool:
    screen = app.screen
    return isinstance(screen, OverviewScreen) and screen.snapshot is not None


async def test_a_stalled_feed_is_one_incident_first_on_the_overview(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(CHAINS)
        await publish(conn)
    finally:
        await conn.close()
    app = app_at(database, NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: loaded(app) and panel(app).incidents)
        shown = panel(app)
        assert [i.root for i in shown.incidents] == ["user_feedback", "redis_hit_ratio"]
        assert shown.has_class("-incidents")
        text = plain(shown)
        assert "▶ ✗ user_feedback (table)  since 18m ago" in text
        assert "`user_feedback` stopped receiving rows at 03:12 (freshness failing" in text
        assert "not ok: user_feedback_freshness fail, 2 more checks, 5 summaries stale" in text
        assert (
            "x rerun user_satisfaction_summary+down · z silence user_feedback_freshness · i why"
            in text
        )
        assert shown.region.y < app.screen.query_one("#tiles").region.y, "incidents first"

        await pilot.press("n")
        assert shown.current is not None and shown.current.root == "redis_hit_ratio"
        assert "▶ ! redis_hit_ratio (check)" in plain(shown, width=78)
        await pilot.press("n")
        assert shown.current.root == "user_feedback"

        await pilot.press("x")
        await settle(pilot, lambda: isinstance(app.screen, RerunDialog))
        await pilot.press("escape")
        await pilot.press("z")
        await settle(pilot, lambda: isinstance(app.screen, SilenceDialog))
        await pilot.press("escape")

        await pilot.press("i")
        await settle(
            pilot,
            lambda: isinstance(app.screen, LineageScreen) and app.screen.snapshot is not None,
        )
        screen = app.screen
        assert isinstance(screen, LineageScreen)
        assert screen.subject == "relation:public.user_feedback"
        why = plain(screen.query_one("#lineage-why"))
        assert why.startswith("fail: `user_feedback` stopped receiving rows at 03:12")
        tree = plain(screen.query_one("#lineage-tree"), width=80).splitlines()
        assert "user_feedback (table) fail" in tree
        assert "│  └─ feedback_rated (view) stale" in tree
        assert all(len(line) <= 80 for line in tree)
        await pilot.press("escape")
        await settle(pilot, lambda: isinstance(app.screen, OverviewScreen))

        await pilot.press("l")  # on the selected step row
        await settle(
            pilot,
            lambda: isinstance(app.screen, LineageScreen) and app.screen.snapshot is not None,
        )
        assert app.screen.subject == "step:rating_daily"  # type: ignore[attr-defined]
        why = plain(app.screen.query_one("#lineage-why"))
        assert why.startswith("ok: step `rating_daily` is ok")


async def test_read_only_offers_no_write_keys_for_an_incident(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(CHAINS)
        await publish(conn)
    finally:
        await conn.close()
    app = app_at(database, NOW, read_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: loaded(app) and panel(app).incidents)
        text = plain(panel(app))
        assert "i why · n next" in text
        assert "x rerun" not in text and "z silence" not in text


async def test_healthy_says_so_plainly(database: str) -> None:
    now = datetime.now().astimezone().replace(microsecond=0)
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO pipectl.steps (name, kind, relation) VALUES"
            " ('user_satisfaction_summary', 'matview', 'public.user_satisfaction_summary')"
        )
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at,"
            " finished_at) VALUES ('user_satisfaction_summary', 'schedule', 'succeeded',"
            " $1, $1, $1)",
            now - timedelta(minutes=3),
        )
        for name in ("user_feedback_freshness", "user_feedback_volume"):
            await conn.execute(
                "INSERT INTO pipectl.checks (name, kind, status, status_since, definition)"
                " VALUES ($1, 'freshness', 'ok', $2, $3)",
                name,
                now - timedelta(hours=1),
                json.dumps({"table": "public.user_feedback"}),
            )
    finally:
        await conn.close()
    app = app_at(database, now)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, lambda: loaded(app))
        shown = panel(app)
        assert shown.incidents == ()
        assert not shown.has_class("-incidents")
        assert plain(shown).strip() == "Healthy: all 2 checks ok, 1 step ok"
