"""/metrics: loopback by default; TLS, mutual TLS and basic auth from an exporter-toolkit
style web config, checked with real HTTPS requests."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from pipectl.agent.http import MetricsServer
from pipectl.agent.metrics import AgentMetrics
from pipectl.config import AgentConfig, ConfigError
from pipectl.webconfig import load_web_config
from tests.agent.conftest import REPO, AgentProcess
from tests.helpers import wait_for
from tests.reliability.certs import Authority, Pair

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Pair, Pair]:
    ca = Authority.create(tmp_path_factory.mktemp("ca"))
    return ca, ca.issue("server", "127.0.0.1", server=True), ca.issue("client", "prometheus")


def _web_config(tmp_path: Path, server: Pair, ca: Authority | None = None) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    lines = [
        "tls_server_config:",
        f"  cert_file: {server.cert}",
        f"  key_file: {server.key}",
        "  min_version: TLS12",
    ]
    if ca is not None:
        lines += [
            "  client_auth_type: RequireAndVerifyClientCert",
            f"  client_ca_file: {ca.ca.cert}",
        ]
    lines += ["basic_auth_users:", f"  prometheus: '{hashed.replace('$2b$', '$2y$')}'"]
    path = tmp_path / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _get(
    url: str,
    *,
    user: str | None = None,
    password: str = PASSWORD,
    cafile: Path | None = None,
    client: Pair | None = None,
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        challenge = exc.headers.get("WWW-Authenticate", "")
        return exc.code, challenge


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    servers: list[MetricsServer] = []

    def start(web_file: Path) -> str:
        metrics = AgentMetrics()
        server = MetricsServer("127.0.0.1:0", load_web_config(web_file))
        server.start(metrics)
        servers.append(server)
        return f"https://127.0.0.1:{server.port}/metrics"

    yield start
    for server in servers:
        server.stop()


def test_metrics_bind_loopback_by_default() -> None:
    assert AgentConfig().metrics_address == "127.0.0.1:10144"
    assert AgentConfig().metrics_web_config is None


def test_https_with_basic_auth(
    tmp_path: Path, authority: tuple[Authority, Pair, Pair], serve: Callable[[Path], str]
) -> None:
    ca, server, _ = authority
    url = serve(_web_config(tmp_path, server))
    status, body = _get(url, user="prometheus", cafile=ca.ca.cert)
    assert status == 200
    assert "pipectl_build_info" in body
    for refused in (
        _get(url, user="prometheus", password="wrong", cafile=ca.ca.cert),
        _get(url, user="nobody", cafile=ca.ca.cert),
        _get(url, cafile=ca.ca.cert),
    ):
        assert refused == (401, 'Basic realm="pipectl metrics", charset="UTF-8"')
    # Twice more with the right password: the cached verification answers the same.
    assert _get(url, user="prometheus", cafile=ca.ca.cert)[0] == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(url, user="prometheus")  # a client that does not trust our CA
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        _get(url.replace("https://", "http://"), user="prometheus")  # plain HTTP refused


def test_a_client_that_never_shakes_hands_stalls_nobody(
    tmp_path: Path, authority: tuple[Authority, Pair, Pair]
) -> None:
    """TLS handshakes run on each connection's thread: a silent client (or a slow one)
    neither blocks other scrapes nor the server's shutdown."""
    ca, pair, _ = authority
    server = MetricsServer("127.0.0.1:0", load_web_config(_web_config(tmp_path, pair)))
    server.start(AgentMetrics())
    url = f"https://127.0.0.1:{server.port}/metrics"
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):  # says nothing
            started = time.monotonic()
            assert _get(url, user="prometheus", cafile=ca.ca.cert)[0] == 200
            assert time.monotonic() - started < 5
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_an_overlong_password_is_refused_not_an_error(
    tmp_path: Path, authority: tuple[Authority, Pair, Pair], serve: Callable[[Path], str]
) -> None:
    ca, server, _ = authority
    url = serve(_web_config(tmp_path, server))
    for user in ("prometheus", "nobody"):  # bcrypt 5 raises for passwords over 72 bytes
        status, challenge = _get(url, user=user, password="x" * 100, cafile=ca.ca.cert)
        assert (status, challenge) == (401, 'Basic realm="pipectl metrics", charset="UTF-8"')


def test_mutual_tls(
    tmp_path: Path, authority: tuple[Authority, Pair, Pair], serve: Callable[[Path], str]
) -> None:
    ca, server, client = authority
    url = serve(_web_config(tmp_path, server, ca))
    assert _get(url, user="prometheus", cafile=ca.ca.cert, client=client)[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        _get(url, user="prometheus", cafile=ca.ca.cert)  # no client certificate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
         ["web.yml:2: tls_server_config.cert_file: file 'nope.crt' not found",
          "web.yml:3: tls_server_config.key_file: file 'nope.key' not found"]),
        ("basic_auth_users:\n  prometheus: plaintext\n",
         ["web.yml:2: basic_auth_users.prometheus: expected a bcrypt hash ($2a$, $2b$ or $2y$,"
          " as htpasswd -B makes)"]),
        ("tls_server_config:\n  cipher_suites: [x]\n",
         ["web.yml:2: tls_server_config.cipher_suites: Python's ssl module chooses the cipher"
          " suites", "web.yml:1: tls_server_config: needs both cert_file and key_file"]),
        ("basic_auth_user:\n  x: y\n",
         ["web.yml:1: basic_auth_user: unknown key 'basic_auth_user'; did you mean"
          " 'basic_auth_users'?"]),
        ("tls_server_config: [\n", ["web.yml:2: invalid YAML: "]),
    ],
)  # fmt: skip
def test_web_config_problems_are_located(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    shown = [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems]
    assert len(shown) == len(expected), shown
    for line, start in zip(sorted(shown), sorted(expected), strict=True):
        assert line.startswith(start), (line, start)


async def test_the_agent_serves_https_from_its_config_and_config_check_reads_it(
    database: str,
    tmp_path: Path,
    authority: tuple[Authority, Pair, Pair],
    agent_processes: Callable[..., AgentProcess],
) -> None:
    ca, server, _ = authority
    web = _web_config(tmp_path, server)
    process = agent_processes(database, "", agent=f'metrics_web_config = "{web}"\n')

    async def serving() -> str | None:
        for line in process.log().splitlines():
            if line.startswith("{") and "serving metrics" in line:
                return str(json.loads(line)["msg"])
        return None

    try:
        message = await wait_for(serving, timeout=30, interval=0.2)
        assert message.startswith("serving metrics on https://127.0.0.1:")
        assert message.endswith("/metrics with basic auth")
        url = message.split(" on ", 1)[1].removesuffix(" with basic auth")
        ok = await asyncio.to_thread(_get, url, user="prometheus", cafile=ca.ca.cert)
        refused = await asyncio.to_thread(_get, url, cafile=ca.ca.cert)
        assert ok[0] == 200
        assert refused[0] == 401
    finally:
        process.signal(signal.SIGTERM)
        assert process.wait(15) == 0
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[agent]\nmetrics_web_config = "{tmp_path / "missing.yml"}"\n')
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pipectl", "--config", str(broken), "config", "check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"{tmp_path / 'missing.yml'}: cannot read the web config")


async def test_a_metrics_port_in_use_is_a_message_and_exit_2(database: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nmetrics_address = "{address}"\nlog_format = "json"\n')
        process = AgentProcess(config, database, tmp_path / "agent.log")
        try:
            assert await asyncio.to_thread(process.wait, 60) == 2
        finally:
            process.kill()
    log = process.log()
    assert f"cannot start: cannot serve metrics on {address}" in log
    assert "Traceback" not in log


def test_a_relative_web_config_is_found_next_to_the_config(
    tmp_path: Path, authority: tuple[Authority, Pair, Pair]
) -> None:
    _, server, _ = authority
    folder = tmp_path / "etc"
    folder.mkdir()
    _web_config(folder, server)  # etc/web.yml
    config = folder / "pipectl.toml"
    config.write_text('[agent]\nmetrics_web_config = "web.yml"\n')
    done = subprocess.run(
        [sys.executable, "-m", "pipectl", "--config", str(config), "config", "check"],
        cwd=tmp_path,  # not the config's folder
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{config}: ok" in done.stdout
