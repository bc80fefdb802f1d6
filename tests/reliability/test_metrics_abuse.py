"""/metrics under abuse (issue 13 §4): trickling connections, heads that never end, floods
of wrong passwords. Real sockets against a real MetricsServer, and an agent process with a
small file descriptor limit; assertions on counts and progress, never on speed."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from pipectl.agent.http import Limits, MetricsServer
from pipectl.agent.metrics import AgentMetrics
from pipectl.webconfig import load_web_config
from tests.agent.conftest import REPO
from tests.helpers import wait_for
from tests.reliability.certs import Authority, Pair
from tests.reliability.support import SUMMARY_STEPS, fetchval

PASSWORD = "correct horse battery staple"
PARTIAL_HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # the blank line never comes


def _users(tmp_path: Path, rounds: int, tls: Pair | None = None) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    lines = [] if tls is None else [
        "tls_server_config:", f"  cert_file: {tls.cert}", f"  key_file: {tls.key}",
    ]  # fmt: skip
    lines += ["basic_auth_users:", f"  prometheus: '{hashed}'"]
    path = tmp_path / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _auth(password: str) -> str:
    return "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()


def _get(url: str, password: str | None = None, cafile: Path | None = None) -> int:
    request = urllib.request.Request(url)
    if password is not None:
        request.add_header("Authorization", _auth(password))
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _refused(metrics: AgentMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "pipectl_metrics_http_refused_total", {"reason": reason}
    )
    return value or 0.0


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (or reset) this client socket; never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def _open_trickling(port: int, count: int, head: bytes = PARTIAL_HEAD) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(head)
        clients.append(client)
    return clients


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[MetricsServer, AgentMetrics]]]:
    servers: list[MetricsServer] = []

    def start(
        limits: Limits, web: Path | None = None, clock: Callable[[], float] | None = None
    ) -> tuple[MetricsServer, AgentMetrics]:
        metrics = AgentMetrics()
        server = MetricsServer("127.0.0.1:0", load_web_config(web) if web else None, limits=limits)
        if clock is not None:
            server.clock = clock
        server.start(metrics)
        servers.append(server)
        return server, metrics

    yield start
    for server in servers:
        server.stop()


async def test_connections_beyond_the_cap_are_closed_and_a_scrape_still_gets_in(
    serve: Callable[..., tuple[MetricsServer, AgentMetrics]],
) -> None:
    server, metrics = serve(Limits(max_connections=8, head_deadline=600))
    assert server.port is not None
    clients = _open_trickling(server.port, 30)
    try:
        await wait_for(lambda: _now(_refused(metrics, "connection_limit") == 22))
        assert server.open_connections == 8
        # The 22 that waited longest were closed at once; the 8 newest are held.
        await wait_for(lambda: _now(all(_closed_by_server(c) for c in clients[:22])))
        assert not any(_closed_by_server(c) for c in clients[22:])
        # A well-behaved scrape while every slot is taken gets the oldest trickler's slot
        # and is answered in full.
        url = f"http://127.0.0.1:{server.port}/metrics"
        body = await asyncio.to_thread(_body, url)
        assert 'pipectl_metrics_http_refused_total{reason="connection_limit"} 23.0' in body
        assert _closed_by_server(clients[22])
        assert server.open_connections <= 8
    finally:
        for client in clients:
            client.close()


def _body(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


async def _now(value: bool) -> bool:
    """A condition already computed, for wait_for (which wants an awaitable)."""
    return value


async def test_a_head_trickled_byte_by_byte_is_cut_at_the_deadline(
    serve: Callable[..., tuple[MetricsServer, AgentMetrics]],
) -> None:
    """One deadline for the whole head: a byte every 2 s keeps any per-recv timeout of 3 s
    happy forever, and is still cut once the head has taken 3 s."""
    server, metrics = serve(Limits(head_deadline=3.0))
    assert server.port is not None
    client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sent = 0
    try:
        for byte in PARTIAL_HEAD * 20:  # far more bytes than the deadline lets through
            try:
                client.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            readable, _, _ = await asyncio.to_thread(select.select, [client], [], [], 2.0)
            if readable and _closed_by_server(client):
                break
        else:
            pytest.fail("the trickling head was never cut")
    finally:
        client.close()
    assert 2 <= sent < len(PARTIAL_HEAD * 20)
    assert _refused(metrics, "head_deadline") == 1
    assert server.open_connections == 0


async def test_tls_clients_that_never_shake_hands_count_against_the_cap(
    tmp_path: Path, serve: Callable[..., tuple[MetricsServer, AgentMetrics]]
) -> None:
    ca = Authority.create(tmp_path / "ca")
    pair = ca.issue("server", "127.0.0.1", server=True)
    server, metrics = serve(
        Limits(max_connections=4, head_deadline=5.0), _users(tmp_path, 4, tls=pair)
    )
    assert server.port is not None
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    try:
        await wait_for(lambda: _now(_refused(metrics, "connection_limit") == 6))
        url = f"https://127.0.0.1:{server.port}/metrics"
        assert await asyncio.to_thread(_get, url, PASSWORD, ca.ca.cert) == 200
        # The silent ones still held are cut at the deadline, handshake and all.
        await wait_for(lambda: _now(_refused(metrics, "head_deadline") >= 3), timeout=30)
        await wait_for(lambda: _now(server.open_connections == 0))
    finally:
        for client in silent:
            client.close()


async def test_a_wrong_password_flood_costs_a_bounded_bcrypt_budget(
    tmp_path: Path, serve: Callable[..., tuple[MetricsServer, AgentMetrics]]
) -> None:
    """600 distinct wrong passwords with the budget's clock frozen (no refill): bcrypt runs
    only until the burst is spent, every other attempt is a 429 without bcrypt; the known
    scraper keeps its 200s; an event-loop heartbeat keeps ticking throughout."""
    burst = 0.05
    server, metrics = serve(
        Limits(bcrypt_burst=burst, bcrypt_share=0.1), _users(tmp_path, 8), clock=lambda: 0.0
    )
    assert server.port is not None and server.auth is not None
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert await asyncio.to_thread(_get, url, PASSWORD) == 200  # verified once, remembered
    assert server.auth.bcrypt_calls == 1
    right_cost = server.auth.bcrypt_cpu_seconds  # a right password is never charged
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    statuses: list[int] = []
    progress: list[int] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for batch in range(10):
                passwords = [f"wrong {batch} {i}" for i in range(60)]
                statuses += await asyncio.to_thread(
                    lambda ps=passwords: list(pool.map(lambda p: _get(url, p), ps))
                )
                assert await asyncio.to_thread(_get, url, PASSWORD) == 200
                progress.append(ticks)
    finally:
        beating.cancel()
    checks = server.auth.bcrypt_calls - 1
    assert sorted(set(statuses)) == [401, 429]
    assert statuses.count(401) == checks  # each 401 took one bcrypt check, no more
    assert statuses.count(429) == 600 - checks == _refused(metrics, "auth_throttled")
    # Failures are charged their CPU time and a check starts only while the balance is
    # positive: every failed check but the last fits in the burst.
    assert checks < 600
    charged = server.auth.bcrypt_cpu_seconds - right_cost
    assert charged - server.auth.bcrypt_cpu_max < burst
    assert progress[-1] > 0 and progress == sorted(progress)
    # The same wrong password again: refused from memory, without bcrypt.
    wrong = "wrong 0 0"
    assert await asyncio.to_thread(_get, url, wrong) == 401
    assert server.auth.bcrypt_calls == checks + 1


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
        (b"GET /metrics HTTP/1.1\r\n folded: header\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"G\x00T /metrics HTTP/1.1\r\n\r\n", b"400"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"405"),
    ],
)
def test_malformed_heads_get_a_status_not_a_traceback(
    serve: Callable[..., tuple[MetricsServer, AgentMetrics]],
    caplog: pytest.LogCaptureFixture,
    head: bytes,
    status: bytes,
) -> None:
    server, _ = serve(Limits())
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        client.sendall(head)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert b"Connection: close" in answer
    assert "Traceback" not in caplog.text


# ------------------------------------------------------------------------------ an agent


async def test_an_agent_under_slowloris_and_a_password_flood_keeps_working(
    database: str, tmp_path: Path
) -> None:
    """The agent as a process limited to 256 file descriptors: 400 connections trickling
    heads (beyond the cap and beyond its descriptor limit) and 600 wrong passwords, while a
    scraper with the right password keeps getting 200s and the agent keeps beating, running
    steps and taking new database connections."""
    web = _users(tmp_path, 10)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\nmetrics_address = "127.0.0.1:0"\nheartbeat = "500ms"\nlog_format = "json"\n'
        f'metrics_web_config = "{web}"\n' + SUMMARY_STEPS
    )
    log_file = tmp_path / "agent.log"
    process = _agent_with_fd_limit(config, database, log_file, 256)
    clients: list[socket.socket] = []
    try:

        async def serving() -> str | None:
            for line in log_file.read_text(errors="replace").splitlines():
                if line.startswith("{") and "serving metrics" in line:
                    return str(json.loads(line)["msg"]).split(" on ", 1)[1].split(" ")[0]
            return None

        url = await wait_for(serving, timeout=60, interval=0.2)
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert await asyncio.to_thread(_get, url, PASSWORD) == 200
        beats = "SELECT last_seen FROM pipectl.agents WHERE stopped_at IS NULL"
        runs = "SELECT count(*) FROM pipectl.runs WHERE status = 'succeeded'"
        attack_began = await fetchval(database, "SELECT now()")
        clients = await asyncio.to_thread(_open_trickling, port, 400)
        # Its database connections cut: it must open new ones while under attack.
        await fetchval(
            database,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            flood = pool.map(lambda i: _get(url, f"wrong {i}"), range(600))
            statuses = await asyncio.to_thread(list, flood)
        assert sorted(set(statuses)) <= [401, 429] and 429 in statuses
        assert await asyncio.to_thread(_get, url, PASSWORD) == 200
        # Still beating and refreshing after the attack began, on connections it opened.
        first_beat = await fetchval(database, beats)
        await wait_for(
            lambda: fetchval(database, beats + " AND last_seen > $1", first_beat), timeout=30
        )
        succeeded = await fetchval(database, runs)
        await wait_for(
            lambda: fetchval(
                database,
                "SELECT count(*) > $1 FROM pipectl.runs WHERE status = 'succeeded'"
                " AND started_at > $2",
                succeeded,
                attack_began,
            ),
            timeout=30,
        )
        body = await asyncio.to_thread(_body_with_auth, url)
        held_or_closed = _sample(body, "connection_limit") + _sample(body, "head_deadline")
        assert held_or_closed >= 400 - 64
        assert _sample(body, "auth_throttled") == statuses.count(429)
    finally:
        for client in clients:
            client.close()
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
    log = log_file.read_text(errors="replace")
    assert "Too many open files" not in log
    assert "Traceback" not in log


def _agent_with_fd_limit(
    config: Path, dsn: str, log_file: Path, limit: int
) -> subprocess.Popen[bytes]:
    """`pipectl agent` as a process whose RLIMIT_NOFILE is `limit` (systemd's LimitNOFILE)."""
    launcher = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}));"
        "from pipectl.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    with open(log_file, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", launcher, "agent", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PIPECTL_DATABASE_URL": dsn},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _body_with_auth(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": _auth(PASSWORD)})
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def _sample(body: str, reason: str) -> float:
    prefix = f'pipectl_metrics_http_refused_total{{reason="{reason}"}} '
    line = next(line for line in body.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))
