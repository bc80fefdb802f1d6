"""Servers of a test's own (to stop and start under a running agent) and APES activity."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pipectl.embedded import EmbeddedPostgres, EmbeddedValkey
from pipectl.identifiers import quote_ident
from tests.agent.conftest import AgentProcess
from tests.conftest import PgServer
from tests.helpers import load_schemas

SUMMARIES = ("public.rule_effectiveness_summary", "public.user_satisfaction_summary")


async def seed_activity(dsn: str, rows: int = 300) -> None:
    """Rule applications and feedback of the last days, so the summaries have content."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO rule_performance
                (rule_id, rule_name, prompt_type, improvement_score, confidence_level,
                 execution_time_ms, created_at)
            SELECT 'rule_' || (g % 7), 'Rule ' || (g % 7),
                   (ARRAY['code', 'writing', 'analysis'])[1 + g % 3],
                   (g % 100) / 100.0, ((g * 7) % 100) / 100.0, 50 + g % 400,
                   now() - make_interval(mins => g)
            FROM generate_series(1, $1) AS g
            """,
            rows,
        )
        await conn.execute(
            """
            INSERT INTO user_feedback
                (original_prompt, improved_prompt, user_rating, applied_rules, created_at)
            SELECT 'p' || g, 'q' || g, 1 + g % 5,
                   jsonb_build_array(jsonb_build_object('rule_id', 'rule_' || (g % 7))),
                   now() - make_interval(hours => g % 48)
            FROM generate_series(1, $1) AS g
            """,
            rows,
        )
    finally:
        await conn.close()


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, with the schemas and some activity."""
    server = EmbeddedPostgres(tmp_path / "pg", fast=True)
    server.start()
    try:
        await load_schemas(server.dsn())
        await seed_activity(server.dsn())
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def agent_processes(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """`pipectl agent` as real processes (heartbeat 500 ms, JSON logs, `agent` more lines of
    the [agent] table); killed at the end."""
    started: list[AgentProcess] = []

    def start(dsn: str, body: str, name: str | None = None, agent: str = "") -> AgentProcess:
        index = len(started)
        config = tmp_path / f"agent{index}.toml"
        head = (
            '[agent]\nmetrics_address = "127.0.0.1:0"\nheartbeat = "500ms"\nlog_format = "json"\n'
        )
        if name:
            head += f'name = "{name}"\n'
        head += agent
        config.write_text(head + body)
        process = AgentProcess(config, dsn, tmp_path / f"agent{index}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def as_user(dsn: str, user: str, password: str | None = None) -> str:
    """The same server and database, another login."""
    parts = urlsplit(dsn)
    auth = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port}"))


@pytest.fixture
async def login_role(database: str, pg_server: PgServer) -> AsyncIterator[Callable[..., Any]]:
    """Creates login roles that are members of a pipectl role (unique names: on a shared
    server roles are cluster-wide); drops them at the end."""
    created: list[str] = []

    async def create(member_of: str, password: str | None = None) -> str:
        role = f"pipectl_t_{member_of.removeprefix('pipectl_')}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(
                f"CREATE ROLE {quote_ident(role)} LOGIN IN ROLE {quote_ident(member_of)}"
                + (" PASSWORD $$" + password + "$$" if password else "")
            )
        finally:
            await conn.close()
        created.append(role)
        return role

    yield create
    conn = await asyncpg.connect(database)
    try:
        for role in created:
            await conn.execute(f"DROP OWNED BY {quote_ident(role)}")
    finally:
        await conn.close()
    server = await asyncpg.connect(pg_server.dsn)
    try:
        for role in created:
            await server.execute(f"DROP ROLE IF EXISTS {quote_ident(role)}")
    finally:
        await server.close()
