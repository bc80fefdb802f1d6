"""Lineage, `why` and the incidents of `status` need no more than `pipectl_viewer`: the catalog
is readable by every role, and what the agents published is in the viewer's tables. An agent
role records a schema change (the `lineage.changed` event) under its own name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl.cli import main
from tests.agent.conftest import past_clock, running_agent, steps_toml
from tests.reliability.conftest import as_user
from tests.test_lineage import CHAINS, publish


async def test_a_viewer_reads_lineage_why_and_incidents(
    database: str,
    login_role: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(CHAINS)
        await publish(conn)
    finally:
        await conn.close()
    viewer = as_user(database, await login_role("pipectl_viewer"))
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{viewer}"\n')

    def run(*argv: str) -> tuple[int, Any]:
        code = main([*argv, "--json", "--config", str(config)])
        return code, json.loads(capsys.readouterr().out)

    code, why = await asyncio.to_thread(run, "why", "rating_daily")
    assert code == 0
    assert why["root"]["name"] == "public.user_feedback"
    code, status = await asyncio.to_thread(run, "status")
    assert code == 2
    assert status["incidents"][0]["root"] == "public.user_feedback"
    code, graph = await asyncio.to_thread(run, "lineage", "rating_report", "--upstream")
    assert code == 0
    assert "relation:public.feedback_recent" in {n["id"] for n in graph["nodes"]}


async def test_an_agent_role_records_the_lineage_under_its_own_name(
    database: str, login_role: Callable[..., Any]
) -> None:
    role = await login_role("pipectl_agent")
    async with running_agent(
        as_user(database, role), steps_toml(), serve=False, clock=past_clock()
    ) as agent:
        assert agent.lineage is not None
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT actor FROM pipectl.events WHERE kind = 'lineage.changed'")
    finally:
        await conn.close()
    assert [r["actor"] for r in rows] == [role]
