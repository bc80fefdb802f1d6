"""Embedded servers: start, serve, are reused, and never outlive their owner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis

from pipectl.embedded import EmbeddedServers

pytestmark = pytest.mark.slow

OWNER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from pipectl.embedded import EmbeddedServers

    servers = EmbeddedServers(Path(sys.argv[1]), fast=True)
    with servers.running() as (dsn, url):
        print(json.dumps({"dsn": dsn, "url": url,
                          "pids": [servers.postgres._process.pid, servers.valkey._process.pid]}),
              flush=True)
        time.sleep(120)
    """
)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_owner(state: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(state)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "owner process printed nothing"
    return proc, json.loads(line)


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        if not alive:
            break
        time.sleep(0.1)
    return alive


async def test_servers_start_serve_and_stop(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path / "state", fast=True)
    with servers.running() as (dsn, url):
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            version = int(await conn.fetchval("SHOW server_version_num"))
            assert version >= 180000
        finally:
            await conn.close()
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        pg_port, valkey_port = servers.postgres.port, servers.valkey.port
    assert pg_port and valkey_port
    assert not _port_open(pg_port) and not _port_open(valkey_port)


async def test_state_is_reused_and_fresh_resets_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    servers = EmbeddedServers(state, fast=True)
    with servers.running() as (dsn, _):
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (id int)")
        await conn.close()
    with EmbeddedServers(state, fast=True).running() as (dsn, _):
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT to_regclass('kept') IS NOT NULL")
        await conn.close()
    fresh = EmbeddedServers(state, fast=True)
    fresh.reset()
    with fresh.running() as (dsn, _):
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT to_regclass('kept') IS NULL")
        await conn.close()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_outlives_the_owner(tmp_path: Path, how: signal.Signals) -> None:
    """Ctrl-C, a polite kill and even SIGKILL of the owner leave no server running."""
    proc, info = _start_owner(tmp_path / "state")
    pids = [int(p) for p in info["pids"]]  # type: ignore[attr-defined]
    assert all(psutil.pid_exists(p) for p in pids)
    os.kill(proc.pid, how)
    proc.wait(30)
    assert _wait_gone(pids) == [], f"servers still running after {how.name}"
