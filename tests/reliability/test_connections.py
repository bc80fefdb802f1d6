"""Connection conventions and secrets (issue 13 §3): pipectl connects where libpq would
(service files, PG* variables, application names), says where when nobody named a database,
refuses what it cannot honour, and never prints a password in any form libpq accepts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipectl.config import load_config
from pipectl.conninfo import resolve_target
from pipectl.db import connect
from tests.agent.conftest import REPO, AgentProcess
from tests.helpers import wait_for
from tests.reliability.conftest import as_user
from tests.reliability.support import connected

# The libpq environment of the machine running the tests stays out of these ones.
LIBPQ_ENV = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSERVICE",
    "PGSERVICEFILE", "PGSYSCONFDIR", "PGAPPNAME", "PIPECTL_DATABASE_URL", "PIPECTL_CONFIG",
)  # fmt: skip


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LIBPQ_ENV}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # No ~/.pg_service.conf and no system one, unless a test writes them.
    return {**env, "HOME": str(home), "PGSYSCONFDIR": str(tmp_path / "sysconf"), **extra}


def _pipectl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "empty.toml"
    config.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "pipectl", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(tmp_path, **env),
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _service(path: Path, name: str, dsn: str, *extra: str) -> Path:
    """A pg_service.conf section naming the server and database of `dsn`."""
    parts = urlsplit(dsn)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by the test",
        "[unrelated]",
        "host=192.0.2.1",
        f"[{name}]",
        f"host={parts.hostname}",
        f"port={parts.port}",
        f"user={parts.username}",
        f"dbname={parts.path.lstrip('/')}",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _has_schema(dsn: str) -> bool:
    async with connected(dsn) as conn:
        found: bool = await conn.fetchval(
            "SELECT to_regclass('pipectl.schema_migrations') IS NOT NULL"
        )
    return found


# ----------------------------------------------------------------------- service files


async def test_pgservice_names_the_database_db_upgrade_writes_into(
    empty_database: str, tmp_path: Path
) -> None:
    services = _service(tmp_path / "services.conf", "apes", empty_database)
    done = await asyncio.to_thread(
        _pipectl, tmp_path, "db", "upgrade", PGSERVICEFILE=str(services), PGSERVICE="apes"
    )
    assert done.returncode == 0, done.stderr
    port = urlsplit(empty_database).port
    name = urlsplit(empty_database).path.lstrip("/")
    assert f"database: 127.0.0.1:{port}/{name} as postgres (service 'apes' from {services})" in (
        done.stdout
    )
    assert await _has_schema(empty_database)


async def test_service_in_the_url_and_in_the_system_file(
    database: str, empty_database: str, tmp_path: Path
) -> None:
    """`?service=` works like PGSERVICE; a service missing from the user's file is looked up
    in PGSYSCONFDIR/pg_service.conf; what the URL says itself beats the service."""
    _service(tmp_path / "sysconf" / "pg_service.conf", "sys", empty_database)
    user_file = _service(tmp_path / "home" / ".pg_service.conf", "other", empty_database)
    url = "postgresql:///?service=sys"
    done = await asyncio.to_thread(_pipectl, tmp_path, "status", PIPECTL_DATABASE_URL=url)
    assert "this pipectl needs" in done.stderr, done.stderr  # reached the empty database
    assert done.returncode == 2
    assert user_file.exists()
    dbname = urlsplit(database).path.lstrip("/")
    explicit = f"postgresql:///{dbname}?service=sys"
    done = await asyncio.to_thread(_pipectl, tmp_path, "status", PIPECTL_DATABASE_URL=explicit)
    assert done.returncode in (0, 1, 2) and "this pipectl needs" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"PGSERVICE": "missing"}, "service 'missing' is not defined in any of: "),
        ({"PIPECTL_DATABASE_URL": "postgresql:///?service=missing"}, "service 'missing'"),
        ({"PGSERVICE": "odd"}, ".conf:3: [odd] hostaddr is not supported by pipectl"),
        ({"PGSERVICE": "opts"}, "options: only -c name=value settings are supported"),
        ({"PGSERVICE": "ldap"}, "LDAP service lookups are not supported"),
        ({"PGHOSTADDR": "192.0.2.1"}, "PGHOSTADDR is not supported by pipectl"),
    ],
)
def test_a_service_that_cannot_be_honoured_is_refused_before_connecting(
    tmp_path: Path, environment: dict[str, str], expected: str
) -> None:
    services = tmp_path / "services.conf"
    services.write_text(
        "[odd]\nhost=db.invalid\nhostaddr=192.0.2.1\n"
        "[opts]\nhost=db.invalid\noptions=-c statement_timeout=5s --geqo=off -X\n"
        "[ldap]\nldap://ldap.invalid/dc=x?uniqueMember?one?(cn=db)\n"
    )
    for verb in (["status"], ["db", "upgrade"], ["config", "check"]):
        done = _pipectl(tmp_path, *verb, PGSERVICEFILE=str(services), **environment)
        assert done.returncode == 2, (verb, done.stderr)
        assert expected in done.stderr, (verb, done.stderr)
        assert "db.invalid" not in done.stderr.replace(str(services), "")


def test_service_search_follows_libpq(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".pg_service.conf").write_text("[a]\nhost=from-home\n[a]\nhost=second\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pg_service.conf").write_text("[a]\nhost=from-etc\n[b]\nport=6000\n")
    env = {"HOME": str(home), "PGSYSCONFDIR": str(tmp_path / "etc")}
    assert "host=from-home" in str(resolve_target(None, {**env, "PGSERVICE": "a"}).dsn)
    assert "port=6000" in str(resolve_target(None, {**env, "PGSERVICE": "b"}).dsn)
    named = {**env, "PGSERVICEFILE": str(tmp_path / "etc" / "pg_service.conf")}
    assert "host=from-etc" in str(resolve_target(None, {**named, "PGSERVICE": "a"}).dsn)
    # Explicit settings of the URL win; the service fills the rest; no `service` is left.
    target = resolve_target("postgresql://me@h2/db2?service=a&sslmode=require", env)
    assert target.dsn == "postgresql://me@h2/db2?sslmode=require"
    target = resolve_target("postgresql:///db2?service=b", env)
    assert target.dsn == "postgresql:///db2?port=6000"


# -------------------------------------------------------------------- application name


async def test_the_users_application_name_wins_over_pipectls(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGAPPNAME", raising=False)
    cases = [
        (f"{database}?application_name=from-url", {"PGAPPNAME": "from-env"}, "from-url"),
        (database, {"PGAPPNAME": "from-env"}, "from-env"),
        (database, {}, "pipectl status"),
    ]
    for dsn, env, expected in cases:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        config = load_config(None, environ={"PIPECTL_DATABASE_URL": dsn})
        conn = await connect(config.config, application_name="pipectl status")
        try:
            shown = await conn.fetchval("SELECT current_setting('application_name')")
        finally:
            await conn.close()
        for key in env:
            monkeypatch.delenv(key)
        assert shown == expected, dsn
    services = _service(
        tmp_path / "s.conf", "named", database, "application_name=from-service",
        "options=-c statement_timeout=4321 --lock_timeout=1234",
    )  # fmt: skip
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    config = load_config(None, environ={"PIPECTL_DATABASE_URL": "postgresql://?service=named"})
    conn = await connect(config.config, application_name="pipectl status")
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('application_name') AS app,"
            " current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt"
        )
    finally:
        await conn.close()
    assert dict(row) == {"app": "from-service", "st": "4321ms", "lt": "1234ms"}


# ------------------------------------------------------- no database named at all


async def test_status_says_which_server_the_libpq_environment_chose(
    database: str, tmp_path: Path
) -> None:
    parts = urlsplit(database)
    env = {
        "PGHOST": str(parts.hostname),
        "PGPORT": str(parts.port),
        "PGUSER": str(parts.username),
        "PGDATABASE": parts.path.lstrip("/"),
    }
    done = await asyncio.to_thread(_pipectl, tmp_path, "status", **env)
    assert done.returncode in (0, 1, 2), done.stderr
    assert done.stderr.startswith(
        f"pipectl: connected to {parts.hostname}:{parts.port}/{env['PGDATABASE']}"
        f" as {parts.username} (PGHOST, PGPORT, PGDATABASE, PGUSER)\n"
    ), done.stderr
    # With nothing at all, libpq's defaults choose (a local socket as the OS user): said so
    # whether or not a server answers there.
    done = await asyncio.to_thread(_pipectl, tmp_path, "status")
    assert "(libpq defaults: no PIPECTL_DATABASE_URL, database.dsn or PG* variables)" in (
        done.stderr
    ), done.stderr
    assert done.stderr.startswith(("pipectl: connected to ", "pipectl: cannot connect to "))


# ------------------------------------------------------------------ failure messages


async def test_agent_and_cli_give_the_same_reason_for_an_authentication_failure(
    database: str, tmp_path: Path, agent_processes: Callable[..., AgentProcess]
) -> None:
    role = f"pipectl_t_nobody_{uuid.uuid4().hex[:8]}"
    dsn = as_user(database, role)
    reason = f'authentication failed: role "{role}" does not exist'
    cli = await asyncio.to_thread(_pipectl, tmp_path, "status", PIPECTL_DATABASE_URL=dsn)
    assert cli.returncode == 3
    assert cli.stderr.strip() == f"pipectl: cannot connect to {dsn}: {reason}"
    agent = agent_processes(dsn, "")

    async def told() -> bool:
        messages = [json.loads(line)["msg"] for line in agent.log().splitlines() if line]
        return any(f"cannot connect to {dsn}: {reason}" in m for m in messages)

    await wait_for(told, timeout=60)
    assert "28000" not in agent.log() and "Traceback" not in agent.log()


async def test_no_password_form_reaches_config_show_or_a_connection_error(
    database: str, tmp_path: Path
) -> None:
    secret = f"S3cret-{uuid.uuid4().hex[:8]}"
    port = urlsplit(database).port
    unreachable = [
        f"postgresql://u@127.0.0.1:1/db?password={secret}",
        f"postgresql://u@127.0.0.1:1/db?sslmode=disable&PASSWORD={secret}",
        f"postgresql://u:{secret}@127.0.0.1:1/db?sslpassword={secret}",
        f"postgresql://u:{secret}/x@127.0.0.1:1/db",
    ]
    redis_urls = [
        f"redis://:{secret}@127.0.0.1:1/0",
        f"redis://u:{secret}@127.0.0.1:1/0",
        f"redis://127.0.0.1:1/0?password={secret}",
    ]
    shown = []
    for dsn in unreachable:
        for verb in (["config", "show"], ["status"], ["db", "upgrade"]):
            done = await asyncio.to_thread(_pipectl, tmp_path, *verb, PIPECTL_DATABASE_URL=dsn)
            shown.append(done.stdout + done.stderr)
    for url in redis_urls:
        done = await asyncio.to_thread(_pipectl, tmp_path, "config", "show", PIPECTL_REDIS_URL=url)
        shown.append(done.stdout + done.stderr)
    services = tmp_path / "s.conf"
    services.write_text(f"[s]\nhost=127.0.0.1\nport=1\npassword={secret}\nsslpassword={secret}\n")
    for verb in (["config", "show"], ["status"]):
        done = await asyncio.to_thread(
            _pipectl, tmp_path, *verb, PGSERVICEFILE=str(services), PGSERVICE="s"
        )
        shown.append(done.stdout + done.stderr)
    assert not [text for text in shown if secret in text], "a password was printed"
    assert sum("password=****" in text for text in shown) >= 4
    assert "connection refused" in shown[1]
    assert port is not None
