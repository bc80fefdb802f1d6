"""End to end: a real Prometheus scrapes running agents with our rules; a stalled feed in the
simulator makes the stale-data alert go pending (one agent, the shipped rules), or fire and
resolve (two agents on one database, the rules with short `for`), read back through
Prometheus's HTTP API."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import yaml

from pipectl import alert_rules
from pipectl.agent.http import MetricsServer
from pipectl.simulator import ApesSimulator
from tests.agent.conftest import running_agent
from tests.helpers import wait_for
from tests.test_observability import RULES, tool

pytestmark = pytest.mark.slow

T = TypeVar("T")

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

    def start(self, *targets: int, rules: Path = RULES) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "pipectl-agent",
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{target}" for target in targets]}
                            ],
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


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body: bytes = response.read()
        return body


async def _api(port: int, path: str) -> Any:
    """Prometheus's HTTP API, asked from a thread: the agents under test share this event
    loop, and a blocking call would stall their ticks and heartbeats for its duration."""
    return json.loads(await asyncio.to_thread(_get, port, path))


async def _scrape(port: int) -> str:
    return (await asyncio.to_thread(_get, port, "/metrics")).decode()


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
    alerts = (await _api(port, "/api/v1/alerts"))["data"]["alerts"]
    stale = next(a for a in alerts if a["labels"]["alertname"] == "PipectlDataStale")
    assert stale["labels"]["check"] == "user_feedback_freshness"
    assert stale["labels"]["severity"] == "critical"
    assert stale["annotations"]["runbook_url"] == (
        f"{alert_rules.DEFAULT_RUNBOOK_BASE}#pipectldatastale"
    )


def _quick_rules(directory: Path) -> Path:
    """The shipped rules with `for: 2s`: the test waits for firing, not for minutes."""
    rules = yaml.safe_load(alert_rules.render())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "2s"
    path = directory / "quick.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


class Stages:
    """The test's waits, each named and bounded, their sum well under pytest's timeout: a
    slow stage fails with its name, its last value and what both sides showed then (the
    waits once summed to 540 s, so a slow stage surfaced only as pytest's 300 s timeout)."""

    def __init__(self, port: int, ports: list[int], budget: float = 240.0) -> None:
        self.port = port
        self.ports = ports
        self.deadline = time.monotonic() + budget

    async def wait(self, name: str, probe: Callable[[], Awaitable[T]], timeout: float) -> T:
        timeout = min(timeout, self.deadline - time.monotonic())
        try:
            return await wait_for(probe, timeout=timeout, interval=0.2)
        except AssertionError as exc:
            try:
                seen = await self._seen()
            except OSError as error:  # a server down is itself the finding
                seen = f"could not read the servers: {error}"
            raise AssertionError(f"stage {name!r}: {exc}\n{seen}") from None

    async def _seen(self) -> str:
        exports = [
            [line for line in (await _scrape(p)).splitlines() if "user_feedback" in line]
            for p in self.ports
        ]
        query = urllib.parse.quote('pipectl_check_status{check="user_feedback_freshness"}')
        series = (await _api(self.port, f"/api/v1/query?query={query}"))["data"]["result"]
        alerts = (await _api(self.port, "/api/v1/alerts"))["data"]["alerts"]
        return f"agents export {exports}; Prometheus has {series}; alerts {alerts}"


async def test_two_agents_on_one_database_fire_and_resolve_the_alert(
    database: str, redis_url: str, prometheus: Prometheus, tmp_path: Path
) -> None:
    """Whichever agent runs the check's ticks, both export its status (read from the
    database at their heartbeats): the alert fires once, without an instance label, and
    resolves once the feed is back. Before, the agent that had not run the tick exported
    nodata (4) and `max by (check)` hid the failure. Prints the timings."""
    port = prometheus.port
    simulator = ApesSimulator(database, redis_url, seed=5, rate=100, rhythm=False)
    await simulator.setup()
    stop = asyncio.Event()
    feeding = asyncio.create_task(simulator.run(stop))
    servers: list[MetricsServer] = []
    try:
        async with AsyncExitStack() as stack:
            agents = [
                await stack.enter_async_context(running_agent(database, BODY, name=name))
                for name in ("agent-a", "agent-b")
            ]
            for agent in agents:
                server = MetricsServer("127.0.0.1:0")
                server.start(agent.metrics)
                servers.append(server)
            ports = [s.port for s in servers if s.port is not None]
            prometheus.start(*ports, rules=_quick_rules(tmp_path))
            stages = Stages(port, ports)
            await stages.wait("targets up", lambda: _targets_up(port, 2), 45)
            await stages.wait("both ok", lambda: _statuses(port, {0.0}), 45)
            # A live feed raises nothing (the rules' evaluation may lag the query by a second,
            # after a start on a feed not yet flowing).
            await stages.wait("no alert on a live feed", lambda: _resolved(port), 30)

            faulted = time.monotonic()
            await simulator.inject("stall", table="user_feedback")  # until cleared
            await stages.wait("both export fail", lambda: _all_export(ports, 2), 45)
            both_export = time.monotonic() - faulted
            recorded_to_exported = await _since_first_fail(database)
            firing = await stages.wait("firing", lambda: _alert(port, "firing"), 30)
            fired = time.monotonic() - faulted
            await stages.wait("both fail", lambda: _statuses(port, {2.0}, count=2), 20)

            cleared = time.monotonic()
            await simulator.clear("stall")
            await stages.wait("both export ok", lambda: _all_export(ports, 0), 45)
            both_clear = time.monotonic() - cleared
            await stages.wait("resolved", lambda: _resolved(port), 30)
            resolved = time.monotonic() - cleared
    finally:
        for server in servers:
            server.stop()
        stop.set()
        await feeding
        await simulator.close()
    assert firing["labels"] == {
        "alertname": "PipectlDataStale",
        "check": "user_feedback_freshness",
        "job": "pipectl-agent",
        "severity": "critical",
    }
    ran_by = await _agents_that_ran(database)
    print(
        f"FIGURE two agents: fault -> both export fail {both_export:.1f}s "
        f"(error_after 10s of it), result recorded -> both export {recorded_to_exported:.1f}s, "
        f"fault -> firing {fired:.1f}s (for: 2s), clear -> both export ok {both_clear:.1f}s, "
        f"clear -> resolved {resolved:.1f}s; check results recorded by {ran_by} agent(s)"
    )


async def _targets_up(port: int, count: int) -> bool:
    try:
        targets = (await _api(port, "/api/v1/targets"))["data"]["activeTargets"]
    except OSError:
        return False
    return sum(t["health"] == "up" for t in targets) == count


async def _statuses(port: int, values: set[float], count: int = 2) -> bool:
    """Prometheus has `count` series of the check's status, all with one of `values`."""
    query = urllib.parse.quote('pipectl_check_status{check="user_feedback_freshness"}')
    result = (await _api(port, f"/api/v1/query?query={query}"))["data"]["result"]
    return len(result) == count and all(float(r["value"][1]) in values for r in result)


async def _all_export(ports: list[int], status: int) -> bool:
    """Every agent's /metrics shows the check with `status`."""
    line = f'pipectl_check_status{{check="user_feedback_freshness",kind="freshness"}} {status}.0'
    bodies = [await _scrape(p) for p in ports]
    return all(line in body for body in bodies)


async def _alert(port: int, state: str | None = None) -> dict[str, Any] | None:
    alerts = (await _api(port, "/api/v1/alerts"))["data"]["alerts"]
    found = [a for a in alerts if a["labels"]["alertname"] == "PipectlDataStale"]
    assert len(found) <= 1, f"one alert for one check, not one per agent: {found}"
    if found and (state is None or found[0]["state"] == state):
        return dict(found[0])
    return None


async def _resolved(port: int) -> bool:
    return await _alert(port) is None


async def _since_first_fail(dsn: str) -> float:
    """Seconds since the first fail result was recorded; called as soon as both agents
    export it, it bounds the delay of the shared state (at most a heartbeat, plus polling)."""
    conn = await asyncpg.connect(dsn)
    try:
        age: float = await conn.fetchval(
            "SELECT extract(epoch FROM now() - min(observed_at))::float8"
            " FROM pipectl.check_results WHERE status = 'fail'"
        )
    finally:
        await conn.close()
    return age


async def _agents_that_ran(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(DISTINCT agent_id) FROM pipectl.check_results"
        )
    finally:
        await conn.close()
    return count


async def _target_up(port: int) -> bool:
    try:
        targets = (await _api(port, "/api/v1/targets"))["data"]["activeTargets"]
    except OSError:
        return False
    return any(t["health"] == "up" for t in targets)


async def _check_status(port: int, expected: int) -> bool:
    query = "pipectl_check_status%7Bcheck%3D%22user_feedback_freshness%22%7D"
    result = (await _api(port, f"/api/v1/query?query={query}"))["data"]["result"]
    return bool(result) and float(result[0]["value"][1]) == expected


async def _alert_state(port: int) -> str | None:
    alerts = (await _api(port, "/api/v1/alerts"))["data"]["alerts"]
    for alert in alerts:
        if alert["labels"]["alertname"] == "PipectlDataStale":
            return str(alert["state"])
    return None
