"""Secrets: passwords in the database and Redis URLs never reach a log, the CLI's output,
`config show` or the pipectl schema. TLS to PostgreSQL (sslmode, CA, client certificates)
works through the DSN, and a bad DSN or certificate path is a located message."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipectl.config import load_config
from pipectl.db import connect
from pipectl.embedded import PG_SERVICE_USER, EmbeddedPostgres
from pipectl.model import RequestKind
from tests.agent.conftest import REPO, AgentProcess
from tests.helpers import load_schemas
from tests.reliability.certs import Authority
from tests.reliability.conftest import as_user
from tests.reliability.support import (
    SUMMARY_STEPS,
    connected,
    file_request,
    schema_text_hits,
    wait_request_done,
)

pytestmark = pytest.mark.slow


def _pipectl(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """stdout and stderr of one CLI call, with `env` added to the environment."""
    done = subprocess.run(
        [sys.executable, "-m", "pipectl", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


async def test_passwords_are_never_logged_printed_or_stored(
    database: str,
    tmp_path: Path,
    login_role: Callable[..., Any],
    agent_processes: Callable[..., AgentProcess],
) -> None:
    db_password = f"Pg-{uuid.uuid4().hex}"
    redis_password = f"Rd-{uuid.uuid4().hex}"
    role = await login_role("pipectl_agent", password=db_password)
    dsn = as_user(database, role, db_password)
    redis_url = f"redis://:{redis_password}@127.0.0.1:1/0"  # nothing listens: errors are logged
    body = (
        f'[redis]\nurl = "{redis_url}"\ntimeout = "300ms"\n'
        + SUMMARY_STEPS
        + """
[[checks]]
name = "redis_hit_ratio"
kind = "cache"
source = "redis"
every = "1s"
"""
    )
    process = agent_processes(dsn, body)
    request = await file_request(database, RequestKind.RERUN, "rule_effectiveness_summary")
    assert await wait_request_done(database, request.id) == "succeeded"

    async def redis_error_recorded() -> bool:
        async with connected(database) as conn:
            found: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pipectl.check_results"
                " WHERE check_name = 'redis_hit_ratio' AND status = 'error')"
            )
        return found

    from tests.helpers import wait_for

    await wait_for(redis_error_recorded, timeout=20)
    process.signal(signal.SIGTERM)
    assert process.wait(15) == 0
    secrets = [db_password, redis_password]
    log = process.log()
    assert "Redis unreachable" in log
    assert not [s for s in secrets if s in log], "a password reached the agent's log"
    assert await schema_text_hits(database, secrets) == []
    # The CLI: file config, environment, a connection that fails (so the DSN is quoted).
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n[redis]\nurl = "{redis_url}"\n')
    outputs = [
        _pipectl(config, "config", "show"),
        _pipectl(config, "config", "check"),
        _pipectl(config, "status"),
        _pipectl(config, "status", "--json"),
        _pipectl(config, "history", "--json"),
        _pipectl(config, "db", "status"),
        _pipectl(config, "config", "show", env={"PIPECTL_DATABASE_URL": dsn}),
        _pipectl(config, "status", env={"PIPECTL_DATABASE_URL": dsn.replace(
            f":{_port(database)}/", ":1/")}),
        _pipectl(config, "check", "redis_hit_ratio", env={"PIPECTL_DATABASE_URL": dsn}),
    ]  # fmt: skip
    shown = "\n".join(outputs)
    assert f"{role}:****@" in outputs[0] and ":****@127.0.0.1:1/0" in outputs[0]
    assert "connection refused" in outputs[7]
    assert not [s for s in secrets if s in shown], "a password reached the CLI's output"
    # The verbs remember the config as valid (pipectl.configcache), never its DSN or URL.
    stored = _config_cache_text()
    assert stored
    assert not [s for s in secrets if s in stored], "a password reached the config cache"


def _config_cache_text() -> str:
    """Every entry of the verbs' config cache (the session's XDG_CACHE_HOME), as text."""
    folder = Path(os.environ["XDG_CACHE_HOME"], "pipectl")
    return "\n".join(path.read_text() for path in folder.rglob("*.json"))


def _port(dsn: str) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(dsn).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
         "database.dsn: sslrootcert file '/nonexistent/ca.pem' does not exist or is not a file"),
        ("sslcert=/nonexistent/c.pem&sslkey=/nonexistent/k.pem",
         "database.dsn: sslcert file '/nonexistent/c.pem' does not exist or is not a file"),
        ("sslmode=sometimes", "database.dsn: sslmode 'sometimes' is not one of disable, allow,"),
    ],
)  # fmt: skip
def test_bad_tls_settings_in_the_dsn_are_located_messages(
    tmp_path: Path, query: str, expected: str
) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text('[agent]\nname = "x"\n')
    dsn = f"postgresql://u:Secret-1@127.0.0.1:5432/db?{query}"
    for verb in (["config", "check"], ["status"], ["agent", "--once"]):
        shown = _pipectl(config, *verb, env={"PIPECTL_DATABASE_URL": dsn})
        assert shown.startswith(f"env PIPECTL_DATABASE_URL: {expected}"), (verb, shown)
        assert "Secret-1" not in shown


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:Secret-1@127.0.0.1:notaport/db",
        "postgresql://u:Secret-1@[::1/db",
        "host=127.0.0.1 user=u password=Secret-1",
        "redis://u:Secret-1@127.0.0.1/db",
        # Unencoded '/', '#' or '?' end the authority early: the password would be the port.
        "postgresql://u:Secret-1/x@127.0.0.1:5432/db",
        "postgresql://u:Secret-1#x@127.0.0.1/db",
        "postgresql://u:Secret-1?x@127.0.0.1/db",
    ],
)
def test_malformed_dsns_are_messages_without_the_password(tmp_path: Path, dsn: str) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n')
    shown = _pipectl(config, "status")
    assert shown.startswith(f"{config}:2: database.dsn: "), shown
    assert "Secret-1" not in shown


@pytest.mark.parametrize(
    "url", ["redis://:Secret-1/x@127.0.0.1:6379/0", "redis://u:Secret-1#x@127.0.0.1/0"]
)
def test_malformed_redis_urls_are_messages_without_the_password(tmp_path: Path, url: str) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[redis]\nurl = "{url}"\n')
    shown = _pipectl(config, "status")
    assert shown.startswith(f"{config}:2: redis.url: "), shown
    assert "Secret-1" not in shown and "percent-encode" in shown


def _system_postgres_bin() -> Path:
    """The machine's PostgreSQL build (the embedded one has no SSL); CI has it."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        if os.environ.get("PIPECTL_REQUIRE_TOOLS") == "1":
            pytest.fail("a PostgreSQL with SSL is required here (PIPECTL_REQUIRE_TOOLS=1)")
        pytest.skip("needs the machine's PostgreSQL (built with SSL) in /usr/lib/postgresql")
    return found[-1].parent


class SystemPostgres(EmbeddedPostgres):
    """A private server in a temporary directory, run from the machine's binaries."""

    @property
    def bin_dir(self) -> Path:
        return _system_postgres_bin()


@pytest.fixture
async def tls_postgres(tmp_path: Path) -> AsyncIterator[SystemPostgres]:
    server = SystemPostgres(tmp_path / "syspg", fast=True)
    server.start()
    try:
        await load_schemas(server.dsn())
        yield server
    finally:
        server.stop()


async def test_sslmode_and_client_certificates_through_the_dsn(
    tmp_path: Path, tls_postgres: SystemPostgres
) -> None:
    """A server that requires TLS and a client certificate for one role: pipectl connects
    with sslmode=verify-full, the CA and the client's certificate and key from the DSN."""
    ca = Authority.create(tmp_path / "ca")
    server = ca.issue("server", "127.0.0.1", server=True)
    client = ca.issue("client", "pipectl_t_cert")
    data = tls_postgres.data_dir
    for source, name in ((server.cert, "server.crt"), (server.key, "server.key"), (ca.ca.cert,
                         "root.crt")):  # fmt: skip
        shutil.copy(source, data / name)
        (data / name).chmod(0o600)
        if os.geteuid() == 0:
            shutil.chown(data / name, PG_SERVICE_USER)
    hba = data / "pg_hba.conf"
    hba.write_text(
        "hostssl all pipectl_t_cert 127.0.0.1/32 cert\n"
        "host all pipectl_t_cert 127.0.0.1/32 reject\n" + hba.read_text()
    )
    admin = tls_postgres.dsn()
    async with connected(admin) as conn:
        await conn.execute("DROP ROLE IF EXISTS pipectl_t_cert")
        await conn.execute("CREATE ROLE pipectl_t_cert LOGIN IN ROLE pipectl_viewer")
        await conn.execute("ALTER SYSTEM SET ssl = on")
        await conn.execute("ALTER SYSTEM SET ssl_ca_file = 'root.crt'")
        await conn.execute("SELECT pg_reload_conf()")
    base = as_user(admin, "pipectl_t_cert")
    tls = f"sslmode=verify-full&sslrootcert={ca.ca.cert}"
    with_cert = f"{base}?{tls}&sslcert={client.cert}&sslkey={client.key}"
    config = tmp_path / "pipectl.toml"
    config.write_text("")
    loaded = load_config(config, environ={"PIPECTL_DATABASE_URL": with_cert})
    conn = await connect(loaded.config)
    try:
        row = await conn.fetchrow(
            "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert row["ssl"] is True
    assert row["client_dn"] == "/CN=pipectl_t_cert"
    status = await asyncio.to_thread(
        _pipectl, config, "status", "--json", env={"PIPECTL_DATABASE_URL": with_cert}
    )
    assert status.lstrip().startswith("{"), status
    for dsn in (f"{base}?{tls}", f"{base}?sslmode=disable", f"{base}?sslmode=prefer"):
        refused = await asyncio.to_thread(
            _pipectl, config, "status", env={"PIPECTL_DATABASE_URL": dsn}
        )
        assert refused.startswith("pipectl: cannot connect to postgresql://pipectl_t_cert@")
    for mode, encrypted in (("disable", False), ("prefer", True), ("require", True)):
        loaded = load_config(config, environ={"PIPECTL_DATABASE_URL": f"{admin}?sslmode={mode}"})
        conn = await connect(loaded.config)
        try:
            ssl_used = await conn.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert ssl_used is encrypted, mode
    async with connected(admin) as conn:
        await conn.execute("DROP ROLE pipectl_t_cert")
