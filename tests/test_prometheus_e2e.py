"""End to end: a real Prometheus scrapes a running agent with our rules; a stalled feed in the
simulator makes the stale-data alert go pending, read back through Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipectl.agent.http import MetricsServer
from pipectl.simulator import ApesSimulator
from tests.agent.conftest import running_agent
from tests.helpers import wait_for
from tests.test_observability import RULES, tool

pytestmark = pytest.mark.slow

BODY = """
[agent]
heartbeat = "1s"

[[checks]]
name = "user_feedback_freshness"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
warn_after = "5s"
error_after = "10s"
every = "1s"
hysteresis = 1
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """Debian's prometheus binary on a free loopback port, with our rule file loaded."""

    def __init__(self, directory: Path) -> None:
        self.binary = tool("prometheus")
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, target: int) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "pipectl-agent",
                            "static_configs": [{"targets": [f"127.0.0.1:{target}"]}],
                        }
                    ],
                }
            )
        )
        with open(self.directory / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path)
    yield server
    server.stop()


def _api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


async def test_stalled_feed_raises_the_stale_data_alert(
    database: str, redis_url: str, prometheus: Prometheus
) -> None:
    port = prometheus.port
    simulator = ApesSimulator(database, redis_url, seed=3, rate=100, rhythm=False)
    await simulator.setup()
    stop = asyncio.Event()
    feeding = asyncio.create_task(simulator.run(stop))
    try:
        async with running_agent(database, BODY) as agent:
            metrics = MetricsServer("127.0.0.1:0")
            metrics.start(agent.metrics)
            try:
                assert metrics.port is not None
                prometheus.start(metrics.port)
                await wait_for(lambda: _target_up(port), timeout=30, interval=0.5)
                await wait_for(lambda: _check_status(port, 0), timeout=30, interval=0.5)
                assert await _alert_state(port) is None  # a live feed raises nothing
                await simulator.inject(
                    "stall", duration=timedelta(minutes=5), table="user_feedback"
                )
                state = await wait_for(lambda: _alert_state(port), timeout=40, interval=0.5)
            finally:
                metrics.stop()
    finally:
        stop.set()
        await feeding
        await simulator.close()
    assert state in ("pending", "firing")
    alerts = _api(port, "/api/v1/alerts")["data"]["alerts"]
    stale = next(a for a in alerts if a["labels"]["alertname"] == "PipectlDataStale")
    assert stale["labels"]["check"] == "user_feedback_freshness"
    assert stale["labels"]["severity"] == "critical"
    assert stale["annotations"]["runbook_url"] == "docs/operating.md#pipectldatastale"


async def _target_up(port: int) -> bool:
    try:
        targets = _api(port, "/api/v1/targets")["data"]["activeTargets"]
    except OSError:
        return False
    return any(t["health"] == "up" for t in targets)


async def _check_status(port: int, expected: int) -> bool:
    query = "pipectl_check_status%7Bcheck%3D%22user_feedback_freshness%22%7D"
    result = _api(port, f"/api/v1/query?query={query}")["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == expected


async def _alert_state(port: int) -> str | None:
    alerts = _api(port, "/api/v1/alerts")["data"]["alerts"]
    for alert in alerts:
        if alert["labels"]["alertname"] == "PipectlDataStale":
            return str(alert["state"])
    return None
