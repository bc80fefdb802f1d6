"""pipectl's schema: migrations apply once, in order, and refuse a newer database."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from pipectl import migrate
from pipectl.sqlfiles import sql_dir
from tests.conftest import PgServer


async def test_upgrade_applies_then_is_a_noop(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        first = await migrate.upgrade(conn)
        assert [m.version for m in first.applied] == [m.version for m in migrate.available()]
        second = await migrate.upgrade(conn)
        assert second.applied == []
        state = await migrate.status(conn)
        assert state.pending == [] and not state.too_new
        assert state.db_version == state.code_version
        tables = {
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'pipectl' AND c.relkind = 'r'"
            )
        }
        assert {
            "runs",
            "check_results",
            "samples",
            "requests",
            "agents",
            "events",
            "steps",
            "checks",
            "schema_migrations",
        } <= tables
    finally:
        await conn.close()


async def test_newer_database_is_refused(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate.upgrade(conn)
        await conn.execute(
            "INSERT INTO pipectl.schema_migrations (version, name, checksum)"
            " VALUES (9999, 'from_the_future', 'x')"
        )
        with pytest.raises(migrate.SchemaTooNew, match="version 9999, newer than this pipectl"):
            await migrate.upgrade(conn)
        with pytest.raises(migrate.SchemaTooNew):
            await migrate.ensure_current(conn)
    finally:
        await conn.close()


async def test_failed_migration_is_rolled_back(empty_database: str, tmp_path: Path) -> None:
    folder = tmp_path / "pipectl"
    shutil.copytree(sql_dir() / "pipectl", folder)
    (folder / "0900_broken.sql").write_text(
        "CREATE TABLE pipectl.half_done (id int);\nSELECT no_such_function();\n"
    )
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(migrate.MigrationError, match=r"0900_broken\.sql failed"):
            await migrate.upgrade(conn, folder)
        state = await migrate.status(conn, folder)
        assert [m.version for m in state.pending] == [900]
        assert await conn.fetchval("SELECT to_regclass('pipectl.half_done')") is None
    finally:
        await conn.close()


async def test_pending_migration_is_reported(database: str, tmp_path: Path) -> None:
    folder = tmp_path / "pipectl"
    shutil.copytree(sql_dir() / "pipectl", folder)
    (folder / "0901_more.sql").write_text("CREATE TABLE pipectl.more (id int);\n")
    conn = await asyncpg.connect(database)
    try:
        state = await migrate.status(conn, folder)
        assert [m.name for m in state.pending] == ["more"]
    finally:
        await conn.close()


async def test_roles_and_grants(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        roles = {r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles")}
        assert set(migrate.ROLES) <= roles
        can = await conn.fetchrow(
            """
            SELECT has_table_privilege('pipectl_viewer', 'pipectl.runs', 'SELECT') AS v_read,
                   has_table_privilege('pipectl_viewer', 'pipectl.requests', 'INSERT') AS v_req,
                   has_any_column_privilege('pipectl_operator', 'pipectl.requests', 'INSERT')
                       AS o_req,
                   has_column_privilege('pipectl_operator', 'pipectl.requests', 'requested_by',
                                        'INSERT') AS o_author,
                   has_table_privilege('pipectl_operator', 'pipectl.runs', 'INSERT') AS o_run,
                   has_table_privilege('pipectl_agent', 'pipectl.runs', 'INSERT') AS a_run
            """
        )
        assert dict(can) == {
            "v_read": True,
            "v_req": False,
            "o_req": True,
            "o_author": False,
            "o_run": False,
            "a_run": True,
        }
    finally:
        await conn.close()


async def test_without_createrole_upgrade_warns_and_continues(
    pg_server: PgServer, empty_database: str
) -> None:
    """A database owner who may not create roles still gets the schema, with warnings."""
    user = f"pipectl_norole_{uuid.uuid4().hex[:8]}"
    name = empty_database.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE ROLE "{user}" LOGIN NOCREATEROLE NOSUPERUSER')
        await admin.execute(f'ALTER DATABASE "{name}" OWNER TO "{user}"')
        conn = await asyncpg.connect(empty_database, user=user)
        try:
            report = await migrate.upgrade(conn)
            assert report.applied, "migrations must still be applied"
            created, warnings = await migrate.apply_roles(
                conn, roles=("pipectl_viewer", "pipectl_operator", f"{user}_missing")
            )
            assert created == []
            assert any("lacks CREATEROLE" in w for w in warnings)
            assert any("grants skipped" in w for w in warnings)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" OWNER TO CURRENT_USER')
        await admin.close()
        cleanup = await asyncpg.connect(empty_database)
        try:
            await cleanup.execute(f'DROP OWNED BY "{user}" CASCADE')
        finally:
            await cleanup.close()
        admin = await asyncpg.connect(pg_server.dsn)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{user}"')
        finally:
            await admin.close()
