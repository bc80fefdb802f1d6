"""Least privilege, tried as an attacker would (issue 13 §2): each statement below was allowed
to a pipectl role before and is refused by PostgreSQL now, while the role's own job still
works. Every test connects as a login role that is a member of the pipectl role."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl import migrate, store
from pipectl.identifiers import Relation
from pipectl.model import Outcome, RequestKind
from pipectl.request_args import RerunArgs, parse_args
from pipectl.sqlfiles import sql_dir
from tests.agent.conftest import REPO
from tests.conftest import PgServer
from tests.reliability.conftest import as_user
from tests.reliability.support import connected

SUMMARY = Relation("public", "rule_effectiveness_summary")


async def _refused(conn: asyncpg.Connection, sql: str, *args: Any) -> str:
    """The message PostgreSQL refused `sql` with (permission denied, SQLSTATE 42501); the
    statement runs in a transaction that is rolled back either way."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
        async with conn.transaction():
            await conn.execute(sql, *args)
    return str(refused.value)


async def _as(database: str, login_role: Callable[..., Any], member_of: str) -> tuple[str, str]:
    role = await login_role(member_of)
    return role, as_user(database, role)


async def _register(conn: asyncpg.Connection, name: str = "agent-under-test") -> uuid.UUID:
    agent_id = uuid.uuid4()
    await store.register_agent(
        conn, agent_id=agent_id, name=name, host="h", pid=1, version="t", heartbeat_seconds=5
    )
    return agent_id


async def _publish(database: str) -> None:
    """A step and a check, published as the schema owner would."""
    async with connected(database) as conn:
        await store.publish_steps(
            conn,
            [store.StepDefinition("step_a", "sql", None, "SELECT 1", None, [], "a step", {}, True)],
            None,
        )
        await store.publish_checks(
            conn,
            [store.CheckDefinition("check_a", "freshness", None, None, None, "a check", {})],
            None,
        )


async def _file(dsn: str, kind: RequestKind, target: str, reason: str = "why", **args: Any) -> int:
    async with connected(dsn) as conn:
        typed = parse_args(kind, args) if args else None
        request = await store.create_request(conn, kind, target, reason, typed)
    return request.id


# ------------------------------------------------------------------------------- the agent


async def test_agent_cannot_erase_or_rewrite_the_audit_trail(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    _, agent = await _as(database, login_role, "pipectl_agent")
    await _file(operator, RequestKind.RERUN, "step_a")
    async with connected(agent) as conn:
        for sql in (
            "DELETE FROM pipectl.events WHERE kind LIKE 'request.%'",
            "DELETE FROM pipectl.events",
            "UPDATE pipectl.events SET actor = 'someone else'",
            "UPDATE pipectl.events SET message = 'nothing to see'",
            "TRUNCATE pipectl.events",
        ):
            await _refused(conn, sql)
        assert await conn.fetchval("SELECT count(*) FROM pipectl.events") == 1


async def test_the_audit_trail_is_append_only_even_for_its_owner(database: str) -> None:
    async with connected(database) as conn:
        await conn.execute("INSERT INTO pipectl.events (kind) VALUES ('note')")
        message = await _refused(conn, "UPDATE pipectl.events SET actor = 'someone else'")
    assert "append-only" in message


async def test_agent_events_name_its_own_user_or_the_requester_it_acts_for(
    database: str, login_role: Callable[..., Any]
) -> None:
    operator_role, operator = await _as(database, login_role, "pipectl_operator")
    agent_role, agent = await _as(database, login_role, "pipectl_agent")
    open_id = await _file(operator, RequestKind.PAUSE, "step_a")
    async with connected(agent) as conn:
        insert = (
            "INSERT INTO pipectl.events (kind, subject, actor, detail) VALUES ($1, 's', $2, $3)"
        )
        await _refused(conn, insert, "step.paused", "alice", {})
        await _refused(conn, insert, "step.paused", operator_role, {})
        # The request exists, but this agent does not hold it.
        await _refused(conn, insert, "step.paused", operator_role, {"request_id": open_id})
        # request.* events are PostgreSQL's own record of filing and finishing.
        await _refused(conn, insert, "request.rerun", agent_role, {})
        await _refused(conn, insert, "request.done", operator_role, {"request_id": open_id})
        agent_id = await _register(conn)
        claimed = await store.claim_requests(conn, agent_id)
        assert [r.id for r in claimed] == [open_id]
        await conn.execute(insert, "step.paused", operator_role, {"request_id": open_id})
        await conn.execute(insert, "note", agent_role, {})
        await store.add_event(conn, "note", "s", "by the agent itself")
        await store.finish_request(conn, open_id, Outcome.SUCCEEDED, "done", agent_id)
        # Finished: the agent no longer acts for that requester.
        await _refused(conn, insert, "step.resumed", operator_role, {"request_id": open_id})
        await _refused(conn, insert, "note", "", {})


async def test_agent_cannot_rewrite_who_asked_or_what(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    _, agent = await _as(database, login_role, "pipectl_agent")
    request_id = await _file(operator, RequestKind.RERUN, "step_a")
    async with connected(agent) as conn:
        for column, value in (
            ("requested_by", "'alice'"),
            ("kind", "'pause'"),
            ("target", "'step_b'"),
            ("reason", "'another reason'"),
            ("args", "'{\"downstream\": true}'"),
            ("created_at", "now() - interval '1 day'"),
        ):
            await _refused(conn, f"UPDATE pipectl.requests SET {column} = {value}")
        await _refused(conn, "DELETE FROM pipectl.requests")
        # Finishing or claiming is for the agent that holds the claim, under its own id.
        await _refused(
            conn,
            "UPDATE pipectl.requests SET done_at = now(), outcome = 'succeeded' WHERE id = $1",
            request_id,
        )
        # Nor who an agent is: its database user is PostgreSQL's session_user.
        await _refused(
            conn,
            "INSERT INTO pipectl.agents (id, name, host, pid, version, db_user)"
            " VALUES (gen_random_uuid(), 'x', 'h', 1, 'v', 'alice')",
        )
        agent_id = await _register(conn)
        await _refused(conn, "UPDATE pipectl.agents SET db_user = 'alice'")
        assert [r.id for r in await store.claim_requests(conn, agent_id)] == [request_id]
        assert await store.finish_request(conn, request_id, Outcome.SUCCEEDED, "ok", agent_id)
        # A finished request's outcome is final.
        await _refused(conn, "UPDATE pipectl.requests SET outcome = 'failed', detail = 'rewritten'")


async def test_agent_claims_and_finishes_requests_only_under_its_own_identity(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    _, agent = await _as(database, login_role, "pipectl_agent")
    _, other_agent = await _as(database, login_role, "pipectl_agent")
    request_id = await _file(operator, RequestKind.RERUN, "step_a")
    async with connected(other_agent) as conn:
        foreign = await _register(conn, "other")
    async with connected(agent) as conn:
        mine = await _register(conn)
        await _refused(
            conn, "UPDATE pipectl.requests SET claimed_by = $1, claimed_at = now()", foreign
        )
        assert [r.id for r in await store.claim_requests(conn, mine)] == [request_id]
    async with connected(other_agent) as conn:
        await _refused(
            conn,
            "UPDATE pipectl.requests SET done_at = now(), outcome = 'failed' WHERE id = $1",
            request_id,
        )
        # Handing a lost peer's claims back to the queue is every agent's job.
        await conn.execute(
            "UPDATE pipectl.requests SET claimed_by = NULL, claimed_at = NULL WHERE id = $1",
            request_id,
        )


async def test_agent_publishes_definitions_under_its_own_name_and_changes_are_audited(
    database: str, login_role: Callable[..., Any]
) -> None:
    await _publish(database)
    agent_role, agent = await _as(database, login_role, "pipectl_agent")
    _, other_agent = await _as(database, login_role, "pipectl_agent")
    async with connected(other_agent) as conn:
        foreign = await _register(conn, "other")
    changed = store.StepDefinition(
        "step_a", "sql", None, "DELETE FROM public.user_feedback", None, [], "a step", {}, True
    )
    async with connected(agent) as conn:
        mine = await _register(conn)
        for sql in (
            "UPDATE pipectl.steps SET sql = 'SELECT 2', published_by = $1",
            "UPDATE pipectl.checks SET sql = 'SELECT 2', published_by = $1",
        ):
            await _refused(conn, sql, foreign)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.publish_steps(conn, [changed], foreign)
        await _refused(conn, "DELETE FROM pipectl.steps")
        await _refused(conn, "DELETE FROM pipectl.checks")
        # The time of a publish is the server's, whatever the agent says.
        await conn.execute("UPDATE pipectl.steps SET published_at = now() - interval '1 year'")
        assert await conn.fetchval(
            "SELECT bool_and(published_at > now() - interval '1 minute') FROM pipectl.steps"
        )
        await store.publish_steps(conn, [changed], mine)
        row = await conn.fetchrow(
            "SELECT sql, published_by, published_at > now() - interval '1 minute' AS fresh"
            " FROM pipectl.steps WHERE name = 'step_a'"
        )
        event = await conn.fetchrow(
            "SELECT actor, subject, detail FROM pipectl.events WHERE kind = 'definition.changed'"
        )
    assert row["sql"] == "DELETE FROM public.user_feedback"
    assert row["published_by"] == mine and row["fresh"]
    assert event is not None, "a changed definition leaves an audit event"
    assert event["actor"] == agent_role and event["subject"] == "step_a"
    assert event["detail"]["columns"] == ["sql"]
    assert event["detail"]["published_by"] == str(mine)


async def test_only_an_agent_publishes_its_own_set_and_retires(
    database: str, login_role: Callable[..., Any]
) -> None:
    """Publications (0007): an agent records its set under its own live id only, retiring
    needs a live agent of the caller's, and operators may do neither."""
    await _publish(database)
    _, agent = await _as(database, login_role, "pipectl_agent")
    _, other_agent = await _as(database, login_role, "pipectl_agent")
    _, operator = await _as(database, login_role, "pipectl_operator")
    step = store.StepDefinition("step_a", "sql", None, "SELECT 1", None, [], "a step", {}, True)
    async with connected(other_agent) as conn:
        foreign = await _register(conn, "other")
    async with connected(operator) as conn:
        await _refused(conn, "SELECT pipectl.set_publications($1, '{}', '{}')", foreign)
        await _refused(conn, "SELECT * FROM pipectl.retire_unpublished()")
        await _refused(conn, "UPDATE pipectl.agents SET published_checks = '{}'")
        await _refused(conn, "UPDATE pipectl.checks SET retired_at = now()")
    async with connected(agent) as conn:
        await _refused(conn, "SELECT * FROM pipectl.retire_unpublished()")  # no agent yet
        await _refused(conn, "SELECT pipectl.set_publications($1, '{}', '{}')", foreign)
        await _refused(conn, "UPDATE pipectl.agents SET published_steps = '{}'")
        await _refused(conn, "UPDATE pipectl.steps SET retired_at = now()")
        mine = await _register(conn)
        # The other agent has not published: nothing is retired yet.
        assert await store.publish(conn, mine, [step], []) == []
    async with connected(other_agent) as conn:
        await conn.execute(
            "UPDATE pipectl.agents SET stopped_at = now(), last_seen = now() WHERE id = $1",
            foreign,
        )
    async with connected(agent) as conn:
        gone = await store.publish(conn, mine, [step], [])
        assert [(r.table, r.name) for r in gone] == [("checks", "check_a")]
        assert await conn.fetchval(
            "SELECT published_steps FROM pipectl.agents WHERE id = $1", mine
        ) == ["step_a"]


async def test_agent_cannot_pause_or_silence_on_its_own(
    database: str, login_role: Callable[..., Any]
) -> None:
    await _publish(database)
    _, agent = await _as(database, login_role, "pipectl_agent")
    forever = datetime.now(UTC) + timedelta(days=36500)
    async with connected(agent) as conn:
        await _register(conn)
        for sql in (
            "UPDATE pipectl.checks SET silenced_until = now() + interval '100 years'",
            "UPDATE pipectl.checks SET silenced_by = 'alice', silence_reason = 'x'",
            "UPDATE pipectl.steps SET paused = true",
            "UPDATE pipectl.steps SET paused_by = 'alice', paused_reason = 'x'",
        ):
            await _refused(conn, sql)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.set_silence(conn, "check_a", forever, "alice", "forever")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.set_paused(conn, "step_a", True, "alice", "no request")


async def test_agent_silences_and_pauses_as_a_claimed_request_asks_within_30_days(
    database: str, login_role: Callable[..., Any]
) -> None:
    await _publish(database)
    operator_role, operator = await _as(database, login_role, "pipectl_operator")
    _, agent = await _as(database, login_role, "pipectl_agent")
    silence = await _file(operator, RequestKind.SILENCE, "check_a", "planned", seconds=3600)
    await _file(operator, RequestKind.PAUSE, "step_a", "vacuum")
    async with connected(agent) as conn:
        agent_id = await _register(conn)
        claimed = {r.id: r for r in await store.claim_requests(conn, agent_id)}
        filed_at = claimed[silence].created_at
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="30 days"):
            await store.set_silence(
                conn, "check_a", filed_at + timedelta(days=36500), operator_role, "planned"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the reason is the request's
            await store.set_silence(
                conn, "check_a", filed_at + timedelta(hours=1), operator_role, "other"
            )
        assert await store.set_silence(
            conn, "check_a", filed_at + timedelta(hours=1), operator_role, "planned"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # a pause request, not resume
            await store.set_paused(conn, "step_a", False, operator_role, "vacuum")
        assert await store.set_paused(conn, "step_a", True, operator_role, "vacuum")
        states = await store.check_states(conn, ["check_a"])
        steps = await store.step_states(conn, ["step_a"])
    assert states[0].silenced_until == filed_at + timedelta(hours=1)
    assert (states[0].silenced_by, states[0].silence_reason) == (operator_role, "planned")
    assert (steps[0].paused, steps[0].paused_by, steps[0].paused_reason) == (
        True,
        operator_role,
        "vacuum",
    )


async def test_agent_prunes_only_through_retention_which_keeps_a_week_of_audit(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    _, agent = await _as(database, login_role, "pipectl_agent")
    await _file(operator, RequestKind.RERUN, "step_a")
    async with connected(database) as conn:
        await conn.execute(
            "INSERT INTO pipectl.check_results (check_name, status) VALUES ('c', 'ok');"
            "INSERT INTO pipectl.samples (series, ts, value) VALUES ('x', now(), 1);"
        )
    async with connected(agent) as conn:
        for table in ("check_results", "samples", "runs", "agents", "requests", "events"):
            await _refused(conn, f"DELETE FROM pipectl.{table}")
        await _refused(conn, "SELECT pipectl.prune('schema_migrations', '0s', 10)")
        deleted = await store.prune(
            conn,
            {
                "results": timedelta(0),
                "samples": timedelta(0),
                "events": timedelta(0),
                "requests": timedelta(0),
            },
        )
        left = await conn.fetchval("SELECT count(*) FROM pipectl.events")
    assert deleted == {"results": 1, "samples": 1, "events": 0, "requests": 0}
    assert left == 1, "the last week of the audit trail survives a retention of 0s"


async def test_agent_records_its_own_reads_and_operators_only_read_them(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, agent = await _as(database, login_role, "pipectl_agent")
    _, operator = await _as(database, login_role, "pipectl_operator")
    async with connected(agent) as conn:
        await store.record_own_reads(conn, "check c", {"public.rule_performance": (10, 9)})
        await _refused(conn, "UPDATE pipectl.own_reads SET fetched = 0")
        await _refused(conn, "DELETE FROM pipectl.own_reads")
        await _refused(
            conn,
            "INSERT INTO pipectl.own_reads (at, relation, fetched, hit, what)"
            " VALUES (now() - interval '1 day', 'x.y', 1, 1, 'w')",
        )
        # Retention only: rows younger than an hour stay whatever age is asked for.
        assert await store.prune_own_reads(conn, timedelta(0)) == 0
    async with connected(operator) as conn:
        assert await conn.fetchval("SELECT sum(fetched) FROM pipectl.own_reads") == 10
        await _refused(
            conn,
            "INSERT INTO pipectl.own_reads (relation, fetched, hit, what)"
            " VALUES ('a.b', 1, 1, 'w')",
        )


async def test_agent_refreshes_summaries_but_cannot_drop_alter_or_grant_them(
    database: str, login_role: Callable[..., Any], pg_server: PgServer
) -> None:
    _, agent = await _as(database, login_role, "pipectl_agent")
    async with connected(database) as conn:
        await conn.execute(
            "CREATE MATERIALIZED VIEW public.unlisted AS SELECT 1 AS x;"
            "CREATE UNIQUE INDEX ON public.unlisted (x);"
            "GRANT SELECT ON public.unlisted TO pipectl_agent"
        )
    async with connected(agent) as conn:
        async with conn.transaction():
            await store.refresh_summary(conn, SUMMARY, concurrently=True)
            await store.refresh_summary(conn, SUMMARY, concurrently=False)
        for sql in (
            f"DROP MATERIALIZED VIEW {SUMMARY.sql}",
            f"ALTER MATERIALIZED VIEW {SUMMARY.sql} RENAME TO gone",
            f"ALTER MATERIALIZED VIEW {SUMMARY.sql} OWNER TO pipectl_operator",
            "REFRESH MATERIALIZED VIEW public.unlisted",
        ):
            await _refused(conn, sql)
        # A GRANT without the grant option is a warning, not an error: nothing changes.
        acl = "SELECT relacl::text FROM pg_class WHERE oid = $1::regclass"
        before = await conn.fetchval(acl, SUMMARY.sql)
        await conn.execute(f"GRANT SELECT, MAINTAIN ON {SUMMARY.sql} TO PUBLIC"
                           if pg_server.version >= 17
                           else f"GRANT SELECT ON {SUMMARY.sql} TO PUBLIC")  # fmt: skip
        assert await conn.fetchval(acl, SUMMARY.sql) == before
        if pg_server.version < 17:
            # Before MAINTAIN, the agent refreshes through a function that knows the list.
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="not registered"):
                await store.refresh_summary(conn, Relation("public", "unlisted"), False)
            await _refused(conn, f"REFRESH MATERIALIZED VIEW {SUMMARY.sql}")
            await _refused(
                conn, "INSERT INTO pipectl.refreshable (schema_name, view_name)"
                " VALUES ('public', 'unlisted')"
            )  # fmt: skip
        owner = await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = $1::regclass",
            SUMMARY.sql,
        )
    assert owner != "pipectl_agent"


async def test_agent_sequences_are_not_its_to_advance(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, agent = await _as(database, login_role, "pipectl_agent")
    async with connected(agent) as conn:
        await _refused(conn, "SELECT nextval('pipectl.requests_id_seq')")
        await _refused(conn, "SELECT setval('pipectl.events_id_seq', 1000000)")


# ---------------------------------------------------------------------------- the operator


async def test_operator_cannot_take_upcoming_request_ids(
    database: str, login_role: Callable[..., Any]
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    async with connected(operator) as conn:
        last = await store.create_request(conn, RequestKind.RERUN, "step_a", "first")
        message = await _refused(
            conn,
            "INSERT INTO pipectl.requests (id, kind, target) OVERRIDING SYSTEM VALUE"
            " SELECT g, 'rerun', 'step_a' FROM generate_series($1::bigint, $1 + 100) AS g",
            last.id + 1,
        )
        assert "permission denied" in message
        later = [
            await store.create_request(conn, RequestKind.RERUN, "step_a", f"retry {n}")
            for n in range(3)
        ]
    assert [r.id for r in later] == [last.id + 1, last.id + 2, last.id + 3]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("detail", "'succeeded: all done'"),
        ("outcome", "'succeeded'"),
        ("done_at", "now()"),
        ("claimed_at", "now()"),
        ("claimed_by", "gen_random_uuid()"),
        ("attempts", "5"),
        ("requested_by", "'alice'"),
        ("created_at", "now() - interval '1 day'"),
    ],
)
async def test_operator_files_requests_and_writes_none_of_their_outcome(
    database: str, login_role: Callable[..., Any], column: str, value: str
) -> None:
    _, operator = await _as(database, login_role, "pipectl_operator")
    async with connected(operator) as conn:
        await _refused(
            conn,
            f"INSERT INTO pipectl.requests (kind, target, {column}) VALUES ('rerun', 's', {value})",
        )
        request = await store.create_request(
            conn, RequestKind.RERUN, "s", "why", RerunArgs(downstream=True)
        )
        await _refused(conn, f"UPDATE pipectl.requests SET {column} = {value}")
    assert request.detail is None and request.outcome is None


async def test_requests_are_stamped_whoever_inserts_them(database: str) -> None:
    """Defaults and the stamping trigger hold for the schema owner too: a request starts
    queued, with no detail, no attempts, and the session's user as its author."""
    async with connected(database) as conn:
        row = await conn.fetchrow(
            "INSERT INTO pipectl.requests (kind, target, requested_by, detail, attempts, outcome)"
            " VALUES ('rerun', 's', 'alice', 'pre-filled', 7, 'succeeded')"
            " RETURNING requested_by = session_user AS mine, detail, attempts, outcome"
        )
    assert dict(row) == {"mine": True, "detail": None, "attempts": 0, "outcome": None}


# ------------------------------------------------------------------- the documented grants

ROLES = ("pipectl_viewer", "pipectl_operator", "pipectl_agent")
GRANTS_TABLE = "<!-- grants table:"


def _documented_grants() -> dict[str, dict[str, set[str]]]:
    """docs/operating.md's grants table: object -> role -> {'SELECT', 'INSERT(kind)', ...}."""
    lines = (REPO / "docs" / "operating.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(GRANTS_TABLE))
    rows: dict[str, dict[str, set[str]]] = {}
    for line in lines[start + 3 :]:
        if not line.strip().startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 1 + len(ROLES), line
        rows[cells[0].replace("`", "")] = {
            role: _privileges(cell) for role, cell in zip(ROLES, cells[1:], strict=True)
        }
    return rows


def _privileges(cell: str) -> set[str]:
    """'INSERT; UPDATE (a, b)' -> {'INSERT', 'UPDATE(a)', 'UPDATE(b)'}; '—' -> set()."""
    found: set[str] = set()
    for part in (p.strip().replace("`", "") for p in cell.split(";")):
        if part in ("—", ""):
            continue
        name, _, columns = part.partition("(")
        if columns:
            found |= {f"{name.strip()}({c.strip()})" for c in columns.rstrip(")").split(",")}
        else:
            found.add(name.strip())
    return found


_CATALOG_GRANTS = """
SELECT c.relname AS object, a.grantee, a.privilege_type AS privilege
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
WHERE n.nspname = 'pipectl' AND a.grantee <> c.relowner
UNION ALL
SELECT c.relname, a.grantee, a.privilege_type || '(' || att.attname || ')'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
WHERE n.nspname = 'pipectl' AND att.attacl IS NOT NULL
UNION ALL
SELECT p.proname || '(' || oidvectortypes(p.proargtypes) || ')', a.grantee, a.privilege_type
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
     aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
WHERE n.nspname = 'pipectl' AND a.grantee <> p.proowner
UNION ALL
SELECT 'schema pipectl', a.grantee, a.privilege_type
FROM pg_namespace n, aclexplode(n.nspacl) a
WHERE n.nspname = 'pipectl' AND a.grantee <> n.nspowner
UNION ALL
SELECT 'member of', m.member, m.roleid::regrole::text
FROM pg_auth_members m
WHERE m.roleid::regrole::text LIKE 'pipectl\\_%' AND m.member::regrole::text LIKE 'pipectl\\_%'
"""


async def test_the_grants_table_in_operating_md_is_the_catalog(database: str) -> None:
    documented = _documented_grants()
    async with connected(database) as conn:
        rows = await conn.fetch(_CATALOG_GRANTS)
        names = {
            r["oid"]: r["rolname"] for r in await conn.fetch("SELECT oid, rolname FROM pg_roles")
        }
        tables = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'pipectl' AND c.relkind IN ('r', 'p', 'v', 'm')"
            )
        }
    granted: dict[str, dict[str, set[str]]] = {}
    for row in rows:
        grantee = "PUBLIC" if row["grantee"] == 0 else names[row["grantee"]]
        granted.setdefault(row["object"], {}).setdefault(grantee, set()).add(row["privilege"])
    strangers = {
        obj: sorted(role for role in by_role if role not in ROLES)
        for obj, by_role in granted.items()
        if set(by_role) - set(ROLES)
    }
    assert strangers == {}, "grants to PUBLIC or other roles in the pipectl schema"
    catalog = {
        obj: {role: by_role.get(role, set()) for role in ROLES} for obj, by_role in granted.items()
    }
    empty = {role: set[str]() for role in ROLES}
    for obj in catalog.keys() | documented.keys():
        assert catalog.get(obj, empty) == documented.get(obj, empty), obj
    assert tables <= documented.keys(), "every table of the schema is in the grants table"


# ----------------------------------------------------------------- upgrading old databases

# The grants of pipectl 0005 and earlier, as `pipectl db upgrade` applied them.
EARLIER_GRANTS = """
GRANT USAGE ON SCHEMA pipectl TO pipectl_viewer, pipectl_operator, pipectl_agent;
GRANT pipectl_viewer TO pipectl_operator;
GRANT pipectl_viewer TO pipectl_agent;
GRANT SELECT ON ALL TABLES IN SCHEMA pipectl TO pipectl_viewer;
GRANT INSERT ON pipectl.requests TO pipectl_operator;
GRANT INSERT, UPDATE, DELETE ON pipectl.agents, pipectl.runs, pipectl.samples TO pipectl_agent;
GRANT INSERT, UPDATE ON pipectl.steps, pipectl.checks TO pipectl_agent;
GRANT INSERT, DELETE ON pipectl.check_results, pipectl.events TO pipectl_agent;
GRANT UPDATE, DELETE ON pipectl.requests TO pipectl_agent;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pipectl TO pipectl_agent;
"""


async def test_db_upgrade_takes_back_what_earlier_versions_granted(
    empty_database: str,
    tmp_path: Path,
    login_role: Callable[..., Any],
    pg_server: PgServer,
) -> None:
    """A database set up by an earlier pipectl, where the agent could erase the audit trail
    and (before PostgreSQL 17) owned the summaries: `pipectl db upgrade` alone brings it to
    the documented grants, and the agent still refreshes."""
    earlier = tmp_path / "pipectl"
    earlier.mkdir()
    for path in sorted((sql_dir() / "pipectl").glob("000[1-5]_*.sql")):
        shutil.copy(path, earlier)
    (earlier / "roles.sql").write_text(EARLIER_GRANTS)
    async with connected(empty_database) as conn:
        await conn.execute((sql_dir() / "apes" / "schema.sql").read_text())
        await migrate.upgrade(conn, earlier)
        await conn.execute((sql_dir() / "apes" / "materialized.sql").read_text())
        if pg_server.version < 17:
            await conn.execute(f"ALTER MATERIALIZED VIEW {SUMMARY.sql} OWNER TO pipectl_agent")
        await conn.execute("INSERT INTO pipectl.events (kind) VALUES ('before the upgrade')")
    agent = as_user(empty_database, await login_role("pipectl_agent"))
    async with connected(agent) as conn:
        before = conn.transaction()
        await before.start()
        try:  # what the agent could do then (rolled back)
            await conn.execute("DELETE FROM pipectl.events")
            if pg_server.version < 17:
                await conn.execute(f"DROP MATERIALIZED VIEW {SUMMARY.sql}")
        finally:
            await before.rollback()
    async with connected(empty_database) as conn:
        report = await migrate.upgrade(conn)
        assert [m.version for m in report.applied] == [
            m.version for m in migrate.available() if m.version > 5
        ]
        assert report.warnings == []
    async with connected(agent) as conn:
        await _refused(conn, "DELETE FROM pipectl.events")
        await _refused(conn, f"DROP MATERIALIZED VIEW {SUMMARY.sql}")
        async with conn.transaction():
            await store.refresh_summary(conn, SUMMARY, concurrently=True)
    documented = _documented_grants()
    async with connected(empty_database) as conn:
        rows = await conn.fetch(
            "SELECT privilege FROM (" + _CATALOG_GRANTS + ") g"
            " WHERE object = 'events' AND grantee = 'pipectl_agent'::regrole"
        )
    assert {r["privilege"] for r in rows} == documented["events"]["pipectl_agent"]
