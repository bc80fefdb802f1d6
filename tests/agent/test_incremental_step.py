"""An incremental step run by the agent: its refresh publishes a difference inside the run's
transaction, so the step's gates judge the new content before COMMIT and a held run leaves the
summary, the state, the watermark and the invalidation log as they were."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from pipectl import store
from pipectl.model import RequestKind
from pipectl.request_args import RerunArgs
from pipectl.store import incremental
from tests.agent.conftest import running_agent
from tests.helpers import make_config, wait_for

STEPS = (Path(__file__).parents[1] / "incremental_apes.toml").read_text(encoding="utf-8")
GATED = STEPS.replace(
    'every = "5m"\n',
    'every = "1h"\n[steps.gates]\nrow_count = { min_ratio = 0.5 }\n'
    'groups = { keys = ["rule_id"], max_lost = 0.2 }\n',
    1,
).split('\n[[steps]]\nname = "user_satisfaction_summary"')[0]


async def _rerun(db: asyncpg.Connection) -> asyncpg.Record:
    request = await store.create_request(
        db, RequestKind.RERUN, "rule_effectiveness_summary", "test", RerunArgs()
    )

    async def done() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM pipectl.requests WHERE id = $1", request.id)
        return row if row and row["done_at"] else None

    return await wait_for(done)


async def test_gates_judge_the_incremental_content_and_a_hold_rolls_it_all_back(
    database: str, db: asyncpg.Connection
) -> None:
    step = make_config(database, None, GATED).steps[0]
    now = datetime.now(UTC).replace(tzinfo=None)
    await db.execute(
        "INSERT INTO rule_performance (rule_id, rule_name, improvement_score, created_at)"
        " SELECT 'r' || (g % 10), 'rule', (g % 7) / 7.0, $1::timestamp - make_interval(hours => g)"
        " FROM generate_series(1, 200) g",
        now,
    )
    async with db.transaction():
        await incremental.install(db, step, triggers=True)
    async with running_agent(database, GATED) as agent:
        first = await _rerun(db)
        assert first["outcome"] == "succeeded", first["detail"]
        run = await db.fetchrow(
            "SELECT * FROM pipectl.runs WHERE step = 'rule_effectiveness_summary' ORDER BY id"
            " DESC LIMIT 1"
        )
        assert run["status"] == "succeeded"
        assert run["rows"] == 10
        assert run["detail"]["rows_read"] == 200
        assert run["detail"]["full_rebuild"] is True
        assert all(g["passed"] for g in run["detail"]["gates"])
        label = {"step": "rule_effectiveness_summary"}
        metric = agent.metrics.registry.get_sample_value
        assert metric("pipectl_incremental_rows_read_total", label) == 200
        assert metric("pipectl_incremental_rows_arrived_total", label) == 200
        before = await db.fetch("SELECT * FROM rule_effectiveness_summary ORDER BY rule_id")
        state = await db.fetchrow("SELECT * FROM pipectl.incremental_steps")

        # An input breaks behind the watermark: 8 of the 10 rules lose their rows.
        await db.execute("DELETE FROM rule_performance WHERE rule_id NOT IN ('r0', 'r1')")
        logged = await db.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations")
        assert logged > 0
        second = await _rerun(db)
        assert second["outcome"] == "failed"
        held = await db.fetchrow(
            "SELECT * FROM pipectl.runs WHERE step = 'rule_effectiveness_summary' ORDER BY id"
            " DESC LIMIT 1"
        )
        assert held["status"] == "held"
        assert "rule_effectiveness_summary rows 10 → 2" in held["error"]
        assert await db.fetch("SELECT * FROM rule_effectiveness_summary ORDER BY rule_id") == before
        assert await db.fetchrow("SELECT * FROM pipectl.incremental_steps") == state
        assert await db.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations") == logged
        assert metric("pipectl_incremental_rows_read_total", label) == 200  # held: not counted
