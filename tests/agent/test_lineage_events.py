"""The agent re-reads lineage from the catalog on start and on reload; a change in what the
views read is recorded as a `lineage.changed` event, and only a change (issue 15 §1)."""

from __future__ import annotations

import asyncpg

from pipectl.lineage import Node
from tests.agent.conftest import past_clock, running_agent, steps_toml
from tests.helpers import make_loaded

CHECK = """
[[checks]]
name = "feedback_fresh"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
step = "user_satisfaction_summary"
warn_after = "30m"
error_after = "2h"
"""


async def lineage_events(db: asyncpg.Connection) -> list[tuple[str, dict[str, object]]]:
    rows = await db.fetch(
        "SELECT message, detail FROM pipectl.events WHERE kind = 'lineage.changed' ORDER BY id"
    )
    return [(r["message"], r["detail"]) for r in rows]


async def test_start_records_the_lineage_and_a_reload_records_a_schema_change(
    database: str, db: asyncpg.Connection
) -> None:
    body = steps_toml() + CHECK
    async with running_agent(database, body, serve=False, clock=past_clock()) as agent:
        assert agent.lineage is not None
        summary = Node("relation", "public.user_satisfaction_summary")
        assert agent.lineage.upstream(summary) == (
            Node("relation", "public.user_feedback"),
            Node("step", "user_satisfaction_summary"),
        )
        assert agent.lineage.upstream(Node("check", "feedback_fresh")) == (
            Node("relation", "public.user_feedback"),
            Node("step", "user_satisfaction_summary"),
        )
        ((message, detail),) = await lineage_events(db)
        assert message == "lineage recorded: 2 views and materialized views"
        assert detail["reads"] == {
            "public.rule_effectiveness_summary (matview)": ["public.rule_performance"],
            "public.user_satisfaction_summary (matview)": ["public.user_feedback"],
        }

        await agent.reload(make_loaded(database, None, body))
        assert len(await lineage_events(db)) == 1, "nothing changed: nothing recorded"

        await db.execute(
            "CREATE VIEW public.daily_board AS SELECT s.feedback_date, e.usage_count"
            " FROM public.user_satisfaction_summary s"
            " CROSS JOIN public.rule_effectiveness_summary e"
        )
        await agent.reload(make_loaded(database, None, body))
        events = await lineage_events(db)
        assert [m for m, _ in events][1:] == [
            "schema change: public.daily_board (view) added, reads "
            "public.rule_effectiveness_summary, public.user_satisfaction_summary"
        ]
        board = Node("relation", "public.daily_board")
        assert board in agent.lineage.descendants(Node("relation", "public.user_feedback"))

    # A new agent finds the change already recorded.
    async with running_agent(database, body, serve=False, clock=past_clock()):
        assert len(await lineage_events(db)) == 2
