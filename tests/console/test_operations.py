"""Every write action end to end: the console files the request, a real in-process agent
carries it out, and the console reports each step (toasts) and shows the new state."""

from __future__ import annotations

from typing import Any

import asyncpg
from textual.notifications import Notify

from pipectl.console.messages import RequestFiled, RequestProgress
from pipectl.console.screens.checks import ChecksScreen
from pipectl.console.screens.dialogs import PauseDialog, RerunDialog, SilenceDialog
from pipectl.console.screens.overview import OverviewScreen
from tests.agent.conftest import running_agent, steps_toml
from tests.console.conftest import Recorder, console_app, plain, settle
from tests.console.seed import CHECK_TOML
from tests.console.test_screens import cell, keys, table_of


def shown(app: Any, kind: type[Any]) -> Any:
    """The current screen if it is a `kind` and (for data screens) has data."""
    screen = app.screen
    loaded = getattr(screen, "snapshot", True) is not None
    return screen if isinstance(screen, kind) and loaded else None


def toasts(app: Any) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


async def test_rerun_with_downstream_confirms_the_exact_steps_and_runs_them(
    database: str, db: asyncpg.Connection, recorder: Recorder
) -> None:
    async with running_agent(database, steps_toml()):
        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(120, 40), message_hook=recorder) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            table = table_of(app)
            assert table.selected_key == "rule_effectiveness_summary"
            await pilot.press("R")
            dialog = await settle(pilot, lambda: isinstance(app.screen, RerunDialog) and app.screen)
            plan = plain(dialog.query_one("#plan"))
            assert plan.index("1  rule_effectiveness_summary") < plan.index(
                "2  user_satisfaction_summary"
            )
            assert "(2 steps)" in str(dialog.query_one("#dialog").border_title)
            # No reason, no request.
            await pilot.click("#confirm")
            assert isinstance(app.screen, RerunDialog)
            assert "a reason is needed" in plain(dialog.query_one("#problem"))
            await pilot.press(*"stale numbers", "enter")
            assert isinstance(app.screen, OverviewScreen)
            filed = await settle(pilot, lambda: recorder.of(RequestFiled))
            request_id = filed[0].request.id
            await settle(pilot, lambda: any("succeeded" in t for t in toasts(app)))
            # Filed, then finished (claimed may be folded into the outcome when quick), each
            # toast replacing the one before: one on screen per request.
            notes = [m.notification for m in recorder.of(Notify)]
            said = [f"{n.title}: {n.message}" for n in notes]
            assert said[0].startswith(f"Request {request_id} filed: rerun ")
            assert any(f"Request {request_id} succeeded" in t for t in said)
            assert len([t for t in toasts(app) if f"Request {request_id} " in t]) == 1
            assert all(m.row.request.id == request_id for m in recorder.of(RequestProgress))
            await settle(pilot, lambda: cell(table, "user_satisfaction_summary", "state") == "✓ ok")
    row = await db.fetchrow("SELECT * FROM pipectl.requests WHERE id = $1", request_id)
    assert row["kind"] == "rerun" and row["reason"] == "stale numbers"
    assert row["args"] == '{"downstream": true}'
    assert row["outcome"] == "succeeded"
    runs = await db.fetch(
        "SELECT step FROM pipectl.runs WHERE request_id = $1 ORDER BY id", request_id
    )
    assert [r["step"] for r in runs] == ["rule_effectiveness_summary", "user_satisfaction_summary"]


async def test_pause_asks_why_then_resume_undoes_it(database: str, db: asyncpg.Connection) -> None:
    async with running_agent(database, steps_toml()):
        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            table = table_of(app)

            def state(step: str) -> str:
                return cell(table, step, "state")

            await pilot.press("down", "p")
            dialog = await settle(pilot, lambda: isinstance(app.screen, PauseDialog) and app.screen)
            assert dialog.step == "user_satisfaction_summary"
            await pilot.press(*"upstream broken", "enter")
            await settle(pilot, lambda: state("user_satisfaction_summary") == "⏸ paused")
            assert "paused by" in cell(table, "user_satisfaction_summary", "note")
            # The same key now resumes, without a dialog (it is not dangerous).
            active = {b.binding.action for b in app.screen.active_bindings.values()}
            assert "resume" in active and "pause" not in active
            await pilot.press("p")
            await settle(pilot, lambda: state("user_satisfaction_summary") != "⏸ paused")
            await settle(pilot, lambda: any("resumed" in t for t in toasts(app)))
    paused = await db.fetchval(
        "SELECT paused FROM pipectl.steps WHERE name = 'user_satisfaction_summary'"
    )
    assert paused is False
    reasons = await db.fetch("SELECT kind, reason FROM pipectl.requests ORDER BY id")
    assert [(r["kind"], r["reason"]) for r in reasons] == [
        ("pause", "upstream broken"),
        ("resume", ""),
    ]


async def test_silence_for_a_period_with_a_reason_then_unsilence(
    database: str, db: asyncpg.Connection
) -> None:
    async with running_agent(database, steps_toml() + CHECK_TOML):
        # Shown as if published (after the agent's start, which retires what no live agent
        # publishes: this agent's config has the check, disabled, and runs no checks).
        await db.execute(
            "INSERT INTO pipectl.checks (name, kind, target) VALUES ('feedback_fresh',"
            " 'freshness', 'public.user_feedback')"
        )
        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            await pilot.press("2")
            await settle(pilot, lambda: shown(app, ChecksScreen))
            table = table_of(app)
            assert keys(table) == ["feedback_fresh"]
            await pilot.press("m")
            dialog = await settle(pilot, lambda: shown(app, SilenceDialog))
            await pilot.press("ctrl+a", "ctrl+k", *"90m", "enter")  # the span, then the reason
            await pilot.press(*"known outage", "enter")
            assert dialog.check == "feedback_fresh"
            await settle(pilot, lambda: "(silenced)" in cell(table, "feedback_fresh", "status"))
            row = await db.fetchrow(
                "SELECT r.created_at, c.silenced_until, c.silence_reason FROM pipectl.checks c,"
                " pipectl.requests r WHERE c.name = 'feedback_fresh' AND r.kind = 'silence'"
            )
            assert (row["silenced_until"] - row["created_at"]).total_seconds() == 5400
            assert row["silence_reason"] == "known outage"
            await pilot.press("m")  # unsilence: no dialog
            await settle(pilot, lambda: "(silenced)" not in cell(table, "feedback_fresh", "status"))


async def test_check_now_reports_the_agents_answer(database: str) -> None:
    """This agent runs no checks, so it rejects the request: the console says so."""
    async with running_agent(database, steps_toml()):
        await _publish_check(database)  # after the start, which would retire it
        app = console_app(database, fixed_clock=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: table_of(app).row_count == 2)
            await pilot.press("c")
            await settle(pilot, lambda: any("rejected" in t for t in toasts(app)))
            rejected = next(n for n in app._notifications if "rejected" in n.title)
            assert rejected.severity == "warning"
            assert "runs no checks" in rejected.message


async def _publish_check(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO pipectl.checks (name, kind) VALUES ('feedback_fresh', 'freshness')"
        )
    finally:
        await conn.close()
