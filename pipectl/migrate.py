"""Apply sql/pipectl/NNNN_name.sql in order, one transaction each, recorded in a version table."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from pipectl.identifiers import quote_ident
from pipectl.sqlfiles import sql_dir
from pipectl.store.base import Conn

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ROLES = ("pipectl_viewer", "pipectl_operator", "pipectl_agent")
# Serializes concurrent upgrades from several hosts.
_LOCK_KEY = 0x70697065  # "pipe"

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS pipectl;
CREATE TABLE IF NOT EXISTS pipectl.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text NOT NULL DEFAULT session_user
);
"""


class MigrationError(Exception):
    """The schema cannot be brought to the code's version; the message says why."""


class SchemaTooNew(MigrationError):
    """The database was upgraded by a newer pipectl than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    applied_by: str


@dataclass(frozen=True)
class SchemaStatus:
    applied: list[AppliedMigration]
    pending: list[Migration]
    code_version: int
    changed: list[int]

    @property
    def db_version(self) -> int:
        return max((m.version for m in self.applied), default=0)

    @property
    def too_new(self) -> bool:
        return self.db_version > self.code_version


@dataclass
class UpgradeReport:
    applied: list[Migration]
    roles_created: list[str]
    warnings: list[str]


def available(directory: Path | None = None) -> list[Migration]:
    """The migrations shipped with this code, in version order."""
    folder = directory or sql_dir() / "pipectl"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number in {folder}")
    return found


async def status(conn: Conn, directory: Path | None = None) -> SchemaStatus:
    """What is applied and what is pending, without changing anything."""
    migrations = available(directory)
    code_version = max((m.version for m in migrations), default=0)
    exists = await conn.fetchval("SELECT to_regclass('pipectl.schema_migrations') IS NOT NULL")
    applied: list[AppliedMigration] = []
    if exists:
        rows = await conn.fetch(
            "SELECT version, name, checksum, applied_at, applied_by"
            " FROM pipectl.schema_migrations ORDER BY version"
        )
        applied = [AppliedMigration(**dict(r)) for r in rows]
    done = {m.version: m for m in applied}
    pending = [m for m in migrations if m.version not in done]
    changed = [
        m.version
        for m in migrations
        if m.version in done and done[m.version].checksum != m.checksum
    ]
    return SchemaStatus(applied, pending, code_version, changed)


def too_new_message(state: SchemaStatus) -> str:
    return (
        f"the pipectl schema is at version {state.db_version}, newer than this pipectl "
        f"(which knows up to {state.code_version}); upgrade pipectl instead of the database"
    )


async def ensure_current(conn: Conn) -> None:
    """Refuse to run against a schema that is missing, behind, or ahead of the code."""
    state = await status(conn)
    if state.too_new:
        raise SchemaTooNew(too_new_message(state))
    if state.pending:
        raise MigrationError(
            f"the pipectl schema is at version {state.db_version}, this pipectl needs "
            f"{state.code_version}; run `pipectl db upgrade`"
        )


async def upgrade(conn: Conn, directory: Path | None = None) -> UpgradeReport:
    """Apply pending migrations, then roles and grants. Safe to run again and concurrently."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_BOOTSTRAP)
        state = await status(conn, directory)
        if state.too_new:
            raise SchemaTooNew(too_new_message(state))
        warnings = [
            f"migration {v:04d} changed after it was applied; its new text was not run"
            for v in state.changed
        ]
        for migration in state.pending:
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO pipectl.schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.path.name} failed and was rolled back: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        created, role_warnings = await apply_roles(conn, directory)
        return UpgradeReport(state.pending, created, warnings + role_warnings)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def apply_roles(
    conn: Conn, directory: Path | None = None, roles: tuple[str, ...] = ROLES
) -> tuple[list[str], list[str]]:
    """Create the three roles where allowed, then grant. Missing privilege is a warning."""
    folder = directory or sql_dir() / "pipectl"
    created: list[str] = []
    warnings: list[str] = []
    existing = {
        r["rolname"]
        for r in await conn.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", list(ROLES)
        )
    }
    for role in roles:
        if role in existing:
            continue
        try:
            await conn.execute(f"CREATE ROLE {quote_ident(role)} NOLOGIN")
            created.append(role)
            existing.add(role)
        except asyncpg.InsufficientPrivilegeError:
            warnings.append(
                f"cannot create role {role} (the connecting user lacks CREATEROLE); "
                "ask an administrator to create it, then run `pipectl db upgrade` again"
            )
        except asyncpg.DuplicateObjectError:
            existing.add(role)
    if set(roles) <= existing:
        # One transaction, so that a running agent never sees the moment between the REVOKEs
        # and the GRANTs; one savepoint per statement, so that a grant the user may not give
        # (role membership, say) does not hold back the others.
        async with conn.transaction():
            for statement in statements((folder / "roles.sql").read_text(encoding="utf-8")):
                try:
                    async with conn.transaction():
                        await conn.execute(statement)
                except asyncpg.InsufficientPrivilegeError as exc:
                    warnings.append(f"not applied ({exc}): {statement}")
    else:
        warnings.append("grants skipped until all three pipectl roles exist")
    return created, warnings


def statements(script: str) -> list[str]:
    """Split a plain script (no function bodies) into statements, dropping comments."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
