"""Incremental summaries under least privilege: the application's role writes its table as
before with the invalidation triggers on it (their function runs as the pipectl schema's owner);
the agent's role refreshes the summary (state, watermark, invalidations) but cannot drop or
rewrite the summary's definition, the state table or the log beyond its own job."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl.identifiers import quote_ident
from pipectl.store import incremental as store
from tests.helpers import make_config
from tests.reliability.conftest import as_user

APES_STEPS = (Path(__file__).parents[1] / "incremental_apes.toml").read_text(encoding="utf-8")


async def test_app_writes_with_triggers_and_agent_refreshes_as_their_roles(
    database: str, login_role: Callable[..., Any]
) -> None:
    step = make_config(database, None, APES_STEPS).steps[0]
    app = f"apes_app_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(database)
    try:
        await owner.execute(f"CREATE ROLE {quote_ident(app)} LOGIN")
        await owner.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON rule_performance TO {quote_ident(app)};"
            f"GRANT USAGE ON SEQUENCE rule_performance_id_seq TO {quote_ident(app)}"
        )
        now = datetime.now(UTC).replace(tzinfo=None)
        await owner.execute(
            "INSERT INTO rule_performance (rule_id, rule_name, improvement_score, created_at)"
            " SELECT 'r' || (g % 3), 'rule', g / 100.0, $1::timestamp - make_interval(hours => g)"
            " FROM generate_series(1, 90) g",
            now,
        )
        async with owner.transaction():
            await store.install(owner, step, triggers=True)
        agent_role = await login_role("pipectl_agent")
        agent = await asyncpg.connect(as_user(database, agent_role))
        writer = await asyncpg.connect(as_user(database, app))
        try:
            async with agent.transaction():
                first = await store.refresh(agent, step)
            assert first.full
            # Behind the watermark (two days back), as the application: logged, not refused.
            await writer.execute(
                "INSERT INTO rule_performance (rule_id, rule_name, improvement_score, created_at)"
                " VALUES ('r9', 'late', 0.5, $1)",
                now - timedelta(days=2),
            )
            await writer.execute(
                "UPDATE rule_performance SET improvement_score = 0.99 WHERE rule_id = 'r1'"
            )
            await writer.execute("DELETE FROM rule_performance WHERE rule_id = 'r2'")
            assert await owner.fetchval("SELECT count(*) FROM pipectl.incremental_invalidations")
            # The application's role cannot write the log itself.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute(
                    "INSERT INTO pipectl.incremental_invalidations (step, lo, hi)"
                    " VALUES ($1, now(), now())",
                    step.name,
                )
            async with agent.transaction():
                second = await store.refresh(agent, step)
            assert second.invalidations > 0
            assert not await owner.fetchval(
                "SELECT count(*) FROM pipectl.incremental_invalidations"
            )
            published = await owner.fetch(
                f"SELECT rule_id, usage_count FROM {step.relation.sql} ORDER BY 1"  # type: ignore[union-attr]
            )
            assert [(r["rule_id"], r["usage_count"]) for r in published] == [
                ("r0", 30),
                ("r1", 30),
                ("r9", 1),
            ]
            for statement in (
                f"DROP TABLE {step.relation.sql}",  # type: ignore[union-attr]
                "DROP TABLE pipectl_incremental.inc_rule_effectiveness_summary",
                "UPDATE pipectl.incremental_steps SET signature = 'x'",
                "INSERT INTO pipectl.incremental_invalidations (step, lo, hi) "
                "VALUES ('rule_effectiveness_summary', now(), now())",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    async with agent.transaction():
                        await agent.execute(statement)
        finally:
            await agent.close()
            await writer.close()
    finally:
        await owner.execute(f"DROP OWNED BY {quote_ident(app)}")
        await owner.close()
        server = await asyncpg.connect(database)
        try:
            await server.execute(f"DROP ROLE IF EXISTS {quote_ident(app)}")
        finally:
            await server.close()
