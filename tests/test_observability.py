"""Metrics, alert rules, traces and the systemd unit, checked with the real tools."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision
from opentelemetry.trace import SpanKind

from pipectl import alert_rules, store, telemetry
from pipectl.agent.http import MetricsServer
from pipectl.agent.service import Agent
from pipectl.agent.tracing import build_provider, instrument_sql
from pipectl.cli import main
from pipectl.db import connect
from pipectl.logs import setup_logging
from pipectl.model import RequestKind
from tests.agent.conftest import running_agent, steps_toml
from tests.helpers import make_config, make_loaded, wait_for

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "pipectl.rules.yml"


def tool(name: str) -> str:
    """A system tool the test needs; CI installs them and sets PIPECTL_REQUIRE_TOOLS=1."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PIPECTL_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is required here (PIPECTL_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(
            f"{name} not installed (Debian: apt-get install prometheus prometheus-alertmanager"
            " / systemd)"
        )
    return path


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


@pytest.fixture
async def scraped(database: str) -> str:
    """The /metrics text of an agent that has run a step and refused a request."""
    async with running_agent(database, steps_toml('every = "1s"')) as agent:
        server = MetricsServer("127.0.0.1:0")
        server.start(agent.metrics)
        try:
            conn = await asyncpg.connect(database)
            try:
                await wait_for(
                    lambda: conn.fetchval(
                        "SELECT count(*) FROM pipectl.runs WHERE status = 'succeeded'"
                    )
                )
            finally:
                await conn.close()
            await wait_for(lambda: _has(server, "pipectl_agents_alive 1.0"), timeout=10)
            assert server.port is not None
            return scrape(server.port)
        finally:
            server.stop()


async def _has(server: MetricsServer, text: str) -> bool:
    assert server.port is not None
    return text in scrape(server.port)


def test_metric_names_follow_prometheus_conventions(scraped: str) -> None:
    families = re.findall(r"^# TYPE (\S+) (\S+)$", scraped, flags=re.MULTILINE)
    assert families
    allowed_labels = {
        "step",
        "check",
        "kind",
        "status",
        "source",
        "level",
        "version",
        "table",
        "dimension",
        "le",
        "reason",  # pipectl_metrics_http_refused_total: a fixed set (HTTP_REFUSAL_REASONS)
    }
    # The client library's process and platform collectors keep their standard names.
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= {
        name for name, _ in families
    }
    assert any(name.startswith("python_") for name, _ in families)
    for name, kind in families:
        assert name.startswith(("pipectl_", "process_", "python_")), name
        samples = re.findall(rf"^({name}\w*)[{{ ]", scraped, flags=re.MULTILINE)
        if kind == "counter":
            assert name.endswith("_total"), name
            assert all(sample == name for sample in samples), name
    assert "_created" not in scraped
    for line in scraped.splitlines():
        if not line.startswith("pipectl_"):
            continue
        labels = re.findall(r'(\w+)="', line)
        assert set(labels) <= allowed_labels, line
    assert 'pipectl_build_info{version="' in scraped
    assert (
        'pipectl_step_runs_total{status="succeeded",step="rule_effectiveness_summary"}' in scraped
    )
    assert "pipectl_step_run_duration_seconds_bucket" in scraped
    assert 'pipectl_step_interval_seconds{step="rule_effectiveness_summary"} 1.0' in scraped
    assert "pipectl_database_up 1.0" in scraped


def test_promtool_check_metrics_on_a_live_scrape(scraped: str) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=scraped, capture_output=True, text=True
    )
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""
    assert result.returncode == 0


def test_alert_rules_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", "pipectl.rules.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_shipped_rules_are_the_generated_ones() -> None:
    """deploy/prometheus/pipectl.rules.yml is `pipectl config rules` with the defaults:
    edit pipectl/alert_rules.yml.in, then regenerate."""
    assert RULES.read_text() == alert_rules.render(), (
        "regenerate: pipectl config rules > deploy/prometheus/pipectl.rules.yml"
    )


def test_config_rules_with_a_runbook_base_and_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = "https://wiki.example.com/pipectl/operating.md"
    assert main(["config", "rules", "--runbook-base", base, "--job", "apes-agents"]) == 0
    text = capsys.readouterr().out
    rules = yaml.safe_load(text)
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{base}#{alert['alert'].lower()}"
    down = next(a for a in alerts if a["alert"] == "PipectlAgentDown")
    assert down["expr"] == 'up{job="apes-agents"} == 0'
    path = tmp_path / "rules.yml"
    path.write_text(text)
    checked = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runbook-base", "docs/operating.md"], "expected an absolute http(s) URL"),
        (["--runbook-base", "https://x.example/ops.md#alerts"], "has a fragment"),
        (["--job", 'pipectl"} or vector(1) #'], "is not a job name"),
    ],
)
def test_config_rules_refuses_what_it_cannot_write(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "rules", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and "Traceback" not in captured.err


def test_every_aggregation_keeps_the_job() -> None:
    """Separate deployments (one job each) never merge into one alert."""
    rules = yaml.safe_load(RULES.read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in grouping.split(",")}
            assert "job" in labels, f"{rule.get('alert') or rule.get('record')}: {grouping}"
        assert "without" not in rule["expr"]


def test_alertmanager_inhibition_passes_amtool(tmp_path: Path) -> None:
    """The shipped inhibit rules inside a minimal Alertmanager config."""
    inhibit = yaml.safe_load((REPO / "deploy" / "alertmanager" / "pipectl-inhibit.yml").read_text())
    config = {"route": {"receiver": "default"}, "receivers": [{"name": "default"}], **inhibit}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool("amtool"), "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 inhibit rules" in result.stdout
    # Every family has a critical alert to inhibit its warnings with.
    rules = yaml.safe_load(RULES.read_text())
    families: dict[str, set[str]] = {}
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        if "family" in rule["labels"]:
            families.setdefault(rule["labels"]["family"], set()).add(rule["labels"]["severity"])
    assert families and all(found == {"warning", "critical"} for found in families.values())


def _cache_alert(
    severity: str, name: str, level: str, job: str = "pipectl-agent"
) -> dict[str, Any]:
    labels = {"alertname": name, "severity": severity, "family": "cache_hit_ratio", "job": job}
    return {"labels": {**labels, "source": "redis", "level": level}}


class Alertmanager:
    """Debian's Alertmanager on a free loopback port, with the shipped inhibit rules."""

    def __init__(self, directory: Path) -> None:
        inhibit = yaml.safe_load(
            (REPO / "deploy" / "alertmanager" / "pipectl-inhibit.yml").read_text()
        )
        config = directory / "alertmanager.yml"
        routes = {"route": {"receiver": "default"}, "receivers": [{"name": "default"}]}
        config.write_text(yaml.safe_dump({**routes, **inhibit}))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}/api/v2"
        with open(directory / "alertmanager.log", "wb") as log:
            self.process = subprocess.Popen(
                [
                    tool("prometheus-alertmanager"),
                    f"--config.file={config}",
                    f"--storage.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def post(self, alerts: list[dict[str, Any]]) -> bool:
        request = urllib.request.Request(
            f"{self.base}/alerts",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def inhibited(self) -> dict[tuple[str, str, str], bool]:
        """(alertname, level, job) -> whether the alert is inhibited."""
        with urllib.request.urlopen(f"{self.base}/alerts", timeout=5) as response:
            found = json.loads(response.read())
        return {
            (a["labels"]["alertname"], a["labels"].get("level", ""), a["labels"].get("job", "")): (
                bool(a["status"]["inhibitedBy"])
            )
            for a in found
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def test_alertmanager_inhibits_the_warning_for_the_same_thing(tmp_path: Path) -> None:
    """A real Alertmanager with the shipped inhibit rules: the critical cache alert mutes
    the warning of the same job, source and level, and nothing else."""
    alerts = [
        _cache_alert("critical", "PipectlCacheHitRatioCritical", "all"),
        _cache_alert("warning", "PipectlCacheHitRatioLow", "all"),  # muted
        _cache_alert("warning", "PipectlCacheHitRatioLow", "L2"),  # another level
        _cache_alert("warning", "PipectlCacheHitRatioLow", "all", job="pipectl-staging"),
        {"labels": {"alertname": "PipectlCheckFailing", "severity": "warning", "check": "c"}},
    ]
    manager = Alertmanager(tmp_path)
    try:

        async def posted() -> bool:
            return manager.post(alerts)

        async def settled() -> dict[tuple[str, str, str], bool] | None:
            state = manager.inhibited()  # the inhibitor takes new alerts in asynchronously
            return state if len(state) == len(alerts) and any(state.values()) else None

        await wait_for(posted, timeout=30, interval=0.2)
        state = await wait_for(settled, timeout=30, interval=0.2)
    finally:
        manager.stop()
    assert state == {
        ("PipectlCacheHitRatioCritical", "all", "pipectl-agent"): False,
        ("PipectlCacheHitRatioLow", "all", "pipectl-agent"): True,
        ("PipectlCacheHitRatioLow", "L2", "pipectl-agent"): False,
        ("PipectlCacheHitRatioLow", "all", "pipectl-staging"): False,
        ("PipectlCheckFailing", "", ""): False,
    }


def test_every_alert_has_summary_description_and_runbook() -> None:
    rules = yaml.safe_load(RULES.read_text())
    doc = (REPO / "docs" / "operating.md").read_text().lower()
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 10
    for alert in alerts:
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], alert["alert"]
        base, anchor = notes["runbook_url"].split("#", 1)
        assert base == alert_rules.DEFAULT_RUNBOOK_BASE
        assert anchor == alert["alert"].lower()
        assert f"### {alert['alert'].lower()}" in doc, f"no runbook for {alert['alert']}"


DASHBOARD = REPO / "deploy" / "grafana" / "pipectl.json"
SELECTOR = re.compile(r"\b(pipectl_\w+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_provisions_from_a_file_with_datasource_and_job_variables() -> None:
    """File provisioning cannot fill ${DS_PROMETHEUS} (that is for the import dialog): the
    data source is a variable, and every query is narrowed to the chosen jobs."""
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    assert "DS_PROMETHEUS" not in text and "__inputs" not in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job"]
    assert job["type"] == "query" and job["datasource"]["uid"] == "${datasource}"
    assert "label_values(pipectl_build_info, job)" in job["definition"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
    for title, target in _targets(dashboard):
        assert target["datasource"]["uid"] == "${datasource}", title
        selectors = SELECTOR.findall(target["expr"])
        assert selectors, title
        for name, matchers in selectors:
            assert 'job=~"$job"' in matchers, f"{title}: {name} not narrowed to $job"


SHARED_STATE = (
    "pipectl_step_failing",
    "pipectl_step_held",
    "pipectl_check_status",
    "pipectl_agents_alive",
    "pipectl_requests_pending",
    "pipectl_step_last_success_timestamp_seconds",
    "pipectl_freshness_age_seconds",
    "pipectl_cache_hit_ratio",
)


def test_dashboard_shows_held_steps_beside_failing_ones() -> None:
    """A held step (its gates kept the previous content) is counted on the first row, next
    to the failing ones, in the warning colour."""
    panels = [p for p in _dashboard()["panels"] if p["gridPos"]["y"] == 1]
    assert [p["title"] for p in panels[:2]] == ["Steps failing", "Steps held"]
    assert sum(p["gridPos"]["w"] for p in panels) == 24
    held = panels[1]
    assert "pipectl_step_held" in held["targets"][0]["expr"]
    assert held["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["color"] == "yellow"


def test_dashboard_never_sums_state_every_agent_exports() -> None:
    """Every agent exports the pipeline's shared state: adding it up across agents counts
    one failing step once per agent."""
    for title, target in _targets(_dashboard()):
        for name in SHARED_STATE:
            assert not re.search(rf"sum\b[^()]*\(\s*{name}\b", target["expr"]), title


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule, with Grafana's variables filled."""
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": target["expr"].replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for i, (_, target) in enumerate(_targets(_dashboard()))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


CACHE_CHECKS = """
[[checks]]
name = "feedback_fresh"
kind = "freshness"
table = "public.user_feedback"
column = "created_at"
warn_after = "1h"
error_after = "2h"
every = "1s"

[[checks]]
name = "redis_hit_ratio"
kind = "cache"
source = "redis"
min_requests = 1
every = "1s"

[[checks]]
name = "postgres_buffer_hit_ratio"
kind = "cache"
source = "postgres"
tables = ["public.rule_performance"]
min_requests = 1
every = "1s"

[[checks]]
name = "app_cache_hit_ratio"
kind = "cache"
source = "app"
table = "public.prompt_improvement_sessions"
column = "cache_hit_level"
time_column = "created_at"
window = "15m"
min_requests = 10
every = "1s"
"""


def _series(scraped: str) -> list[tuple[str, dict[str, str]]]:
    found = []
    for line in scraped.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"(\w+)(?:\{(.*)\})? ", line)
        assert match, line
        found.append((match[1], dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))))
    return found


def _missing(scraped: str) -> list[str]:
    """Dashboard selectors no series of the scrape matches (job is Prometheus's label);
    a family the agent declares without series yet counts as present by name only when
    the selector has no other matcher."""
    families = set(re.findall(r"^# TYPE (\w+) ", scraped, flags=re.MULTILINE))
    series = _series(scraped)
    missing = []
    for _, target in _targets(_dashboard()):
        for name, matchers in SELECTOR.findall(target["expr"]):
            wanted = [m for m in MATCHER.findall(matchers) if m[0] != "job"]
            family = re.sub(r"_(bucket|count|sum|total)$", "", name)
            if not wanted:
                if family not in families and name not in families:
                    missing.append(name)
                continue
            if not any(n == name and _matches(labels, wanted) for n, labels in series):
                missing.append(f"{name}{{{matchers}}}")
    return missing


def _matches(labels: dict[str, str], wanted: list[tuple[str, str, str]]) -> bool:
    for label, op, value in wanted:
        actual = labels.get(label, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


@dataclass
class LiveAgent:
    """An agent serving /metrics on `port`; `traffic()` gives its cache checks something to
    count between two readings."""

    port: int
    traffic: Callable[[], Awaitable[None]]


@pytest.fixture
async def dashboard_agent(database: str, redis_url: str) -> AsyncIterator[LiveAgent]:
    """An agent with steps, a freshness check and the three cache sources, on data."""
    import redis.asyncio

    conn = await asyncpg.connect(database)
    client = redis.asyncio.Redis.from_url(redis_url)
    await conn.execute(
        "INSERT INTO prompt_improvement_sessions (original_prompt, enhanced_prompt,"
        " applied_rules, response_time_ms, cache_hit_level)"
        " SELECT 'p', 'q', '[]', 50, (ARRAY['L1', 'L2', 'L3', 'MISS'])[1 + g % 4]"
        " FROM generate_series(1, 200) g"
    )
    await conn.execute(
        "INSERT INTO user_feedback (original_prompt, improved_prompt, applied_rules)"
        " VALUES ('p', 'q', '[]')"
    )

    async def traffic() -> None:
        await client.get("pipectl-test:dashboard")
        await conn.fetchval("SELECT count(*) FROM rule_performance")

    body = steps_toml('every = "1s"') + CACHE_CHECKS
    agent = Agent(make_loaded(database, redis_url, body), name="dashboard")
    server = MetricsServer("127.0.0.1:0")
    serving: asyncio.Task[None] | None = None
    try:
        await agent.start()
        serving = asyncio.create_task(agent.serve())
        server.start(agent.metrics)
        assert server.port is not None
        yield LiveAgent(server.port, traffic)
    finally:
        server.stop()
        await agent.stop()
        if serving is not None:
            await asyncio.wait_for(serving, 5)
        await client.aclose()
        await conn.close()


async def test_dashboard_queries_find_series_on_a_live_agent(dashboard_agent: LiveAgent) -> None:
    """Every metric the dashboard reads is exported by a real agent, with the labels the
    query asks for: the app cache line (source="app") included."""
    live = dashboard_agent

    async def complete() -> bool:
        await live.traffic()  # between two readings of the cache checks
        return not _missing(scrape(live.port))

    try:
        await wait_for(complete, timeout=60, interval=0.5)
    except AssertionError:
        pytest.fail(f"not exported: {_missing(scrape(live.port))}")


@pytest.mark.slow
async def test_dashboard_queries_draw_in_a_real_prometheus(
    dashboard_agent: LiveAgent, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the agent as job pipectl-agent; each query, with $job and
    $__rate_interval as Grafana fills them, returns data once the agent exports every series
    it reads (a quality scorecard or an anomaly score needs checks this agent has not)."""
    live = dashboard_agent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web = probe.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "pipectl-agent",
                        "static_configs": [{"targets": [f"127.0.0.1:{live.port}"]}],
                    }
                ],
            }
        )
    )
    prometheus = _prometheus(config, web, tmp_path)
    queries = {
        f"{title} {target['refId']}": target["expr"]
        .replace("$__rate_interval", "15s")
        .replace("$job", "pipectl-agent")
        for title, target in _targets(_dashboard())
    }
    empty: dict[str, str] = dict(queries)

    async def all_drawn() -> bool:
        await live.traffic()
        exported = {name for name, _ in _series(scrape(live.port))}
        for key, expr in list(empty.items()):
            names = {name for name, _ in SELECTOR.findall(expr)}
            if not names <= exported:
                continue  # not exported by this agent (the live test checks the names)
            try:
                result = _query(web, expr)
            except OSError:
                return False  # Prometheus still starting
            if result:
                del empty[key]
        return not any({n for n, _ in SELECTOR.findall(e)} <= exported for e in empty.values())

    try:
        await wait_for(all_drawn, timeout=90, interval=1.0)
    except AssertionError:
        pytest.fail(f"no data from Prometheus for: {sorted(empty)}")
    finally:
        prometheus.terminate()
        prometheus.wait(10)
    # No anomaly baseline yet; the scorecard comes on its own schedule.
    assert set(empty) <= {"Anomaly score A", "Quality scorecard (target 99.9 %) A"}


def _prometheus(config: Path, port: int, directory: Path) -> subprocess.Popen[bytes]:
    with (directory / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _query(port: int, expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[Any] = body["data"]["result"]
    return result


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    unit = (REPO / "deploy" / "systemd" / "pipectl-agent.service").read_text()
    pipectl = Path(sys.executable).with_name("pipectl")
    local = tmp_path / "pipectl-agent.service"
    local.write_text(unit.replace("/opt/pipectl/bin/pipectl", str(pipectl)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    for required in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "EnvironmentFile=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=",
    ):
        assert required in unit


# ------------------------------------------------------------------------------ tracing


async def test_spans_for_runs_with_sql_children_and_trace_id_on_the_run(database: str) -> None:
    exporter = InMemorySpanExporter()
    provider = build_provider("test-env", exporter=exporter)
    assert provider is not None
    instrument_sql(provider)
    try:
        from pipectl.agent.service import Agent
        from tests.helpers import make_loaded

        agent = Agent(
            make_loaded(database, None, steps_toml()), name="traced", tracer_provider=provider
        )
        await agent.start()
        try:
            results = await agent.run_chain(["rule_effectiveness_summary"], "manual")  # type: ignore[arg-type]
        finally:
            await agent.stop()
    finally:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()
    run_span = next(s for s in spans if s.name == "step rule_effectiveness_summary")
    assert run_span.attributes is not None
    assert run_span.attributes["pipectl.step"] == "rule_effectiveness_summary"
    assert run_span.attributes["pipectl.outcome"] == "succeeded"
    assert run_span.attributes["pipectl.trigger"] == "manual"
    resource = run_span.resource.attributes
    assert resource["service.name"] == "pipectl-agent"
    assert resource["deployment.environment.name"] == "test-env"
    assert "service.version" in resource
    assert "host.name" in resource
    (attempt,) = [s for s in spans if s.name == "step rule_effectiveness_summary attempt 1"]
    assert attempt.parent is not None and attempt.parent.span_id == run_span.context.span_id
    assert attempt.attributes is not None and attempt.attributes["pipectl.attempt"] == 1
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == attempt.context.span_id
    ]
    statements = " ".join(str((s.attributes or {}).get("db.statement", "")) for s in children)
    assert "REFRESH MATERIALIZED VIEW CONCURRENTLY" in statements
    run_id = results[0][1]
    conn = await asyncpg.connect(database)
    try:
        stored = await conn.fetchval("SELECT trace_id FROM pipectl.runs WHERE id = $1", run_id)
    finally:
        await conn.close()
    assert stored == f"{run_span.context.trace_id:032x}"


def test_otel_sdk_disabled_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert build_provider("x") is None


async def test_request_outcomes_are_counted(database: str) -> None:
    async with running_agent(database, steps_toml()) as agent:
        conn = await asyncpg.connect(database)
        try:
            from pipectl.db import _init_connection

            await _init_connection(conn)
            request = await store.create_request(conn, RequestKind.RERUN, "nope")
            await wait_for(
                lambda: conn.fetchval(
                    "SELECT done_at IS NOT NULL FROM pipectl.requests WHERE id = $1", request.id
                )
            )
        finally:
            await conn.close()

        # The agent counts an outcome once it is recorded: the count follows done_at.
        async def counted() -> float | None:
            return agent.metrics.registry.get_sample_value(
                "pipectl_requests_total", {"kind": "rerun", "status": "rejected"}
            )

        assert await wait_for(counted) == 1.0


async def test_scorecard_is_exported_as_metrics(database: str) -> None:
    body = """
    [[checks]]
    name = "scores_in_range"
    kind = "quality"
    table = "public.rule_performance"
    time_column = "created_at"
    window = "1d"
    rule = { type = "range", column = "execution_time_ms", min = 0, max = 10000 }
    every = "1s"
    """
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO rule_performance (rule_id, rule_name, execution_time_ms, created_at)"
            " SELECT 'clarity_rule', 'x', CASE WHEN g <= 3 THEN -1 ELSE 100 END,"
            " (now() AT TIME ZONE 'UTC') - interval '1 minute' FROM generate_series(1, 1000) g"
        )
    finally:
        await conn.close()
    async with running_agent(database, body) as agent:

        async def exported() -> float | None:
            return agent.metrics.registry.get_sample_value(
                "pipectl_quality_ratio",
                {"table": "public.rule_performance", "dimension": "accuracy"},
            )

        ratio = await wait_for(exported, timeout=40)
    assert ratio == 0.997  # 3 of 1,000 rows out of range


SHARED_CHECKS = """
[[checks]]
name = "rp_fresh"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "15m"
error_after = "1h"
every = "1h"

[[checks]]
name = "rp_confidence_present"
kind = "quality"
table = "public.rule_performance"
rule = { type = "not_null", column = "confidence_level" }
every = "1h"

[[checks]]
name = "rp_exec_in_range"
kind = "quality"
table = "public.rule_performance"
rule = { type = "range", column = "execution_time_ms", min = 0, max = 600000 }
every = "1h"
"""


async def test_spans_per_check_alone_and_sharing_a_probe(database: str) -> None:
    """A lone check's span holds its probe's SQL; checks sharing a probe each get a span, as
    children of the probe's span, and each result row carries the trace id."""
    exporter = InMemorySpanExporter()
    provider = build_provider("test-env", exporter=exporter)
    assert provider is not None
    instrument_sql(provider)
    try:
        from pipectl.agent.service import Agent
        from tests.helpers import make_loaded

        agent = Agent(make_loaded(database, None, SHARED_CHECKS), tracer_provider=provider)
        await agent.start()
        try:
            await agent.run_check("rp_fresh", "manual")
            await agent.run_checks(["rp_confidence_present", "rp_exec_in_range"], "manual")
        finally:
            await agent.stop()
    finally:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()

    def children(parent: ReadableSpan) -> list[ReadableSpan]:
        span_id = parent.context.span_id
        return [s for s in spans if s.parent is not None and s.parent.span_id == span_id]

    def statements(parent: ReadableSpan) -> str:
        return " ".join(str((s.attributes or {}).get("db.statement", "")) for s in children(parent))

    lone = next(s for s in spans if s.name == "check rp_fresh")
    assert lone.attributes is not None
    assert lone.attributes["pipectl.check.kind"] == "freshness"
    assert lone.attributes["pipectl.outcome"] in ("ok", "warn", "fail", "nodata")
    assert "max(" in statements(lone)
    shared = next(s for s in spans if s.name == "checks: 2 sharing a probe")
    assert "execution_time_ms" in statements(shared) and "confidence_level" in statements(shared)
    names = sorted(s.name for s in children(shared) if s.name.startswith("check "))
    assert names == ["check rp_confidence_present", "check rp_exec_in_range"]
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "SELECT check_name, trace_id, baseline->>'probe_shared_by' AS shared"
            " FROM pipectl.check_results ORDER BY check_name"
        )
    finally:
        await conn.close()
    found = {r["check_name"]: (r["trace_id"], r["shared"]) for r in rows}
    assert found == {
        "rp_confidence_present": (f"{shared.context.trace_id:032x}", "2"),
        "rp_exec_in_range": (f"{shared.context.trace_id:032x}", "2"),
        "rp_fresh": (f"{lone.context.trace_id:032x}", None),
    }


# ------------------------------------------------------------------- OpenTelemetry environment


def test_the_resource_follows_otel_service_name_and_resource_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "apes-agent-eu1")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=data,deployment.environment.name=prod")
    exporter = InMemorySpanExporter()
    built = telemetry.build("pipectl-agent", "staging", exporter=exporter)
    assert built is not None
    with built.tracer("t").start_as_current_span("x"):
        pass
    (span,) = exporter.get_finished_spans()
    attributes = span.resource.attributes
    assert attributes["service.name"] == "apes-agent-eu1"
    assert attributes["team"] == "data"
    assert attributes["deployment.environment.name"] == "prod"  # the environment wins
    assert attributes["service.version"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp_proto_http", "console"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["otlp_proto_grpc"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ["otlp_proto_http"],
        ),
    ],
)
def test_exporters_asked_for_by_the_environment(env: dict[str, str], expected: list[str]) -> None:
    assert [c.name for c in telemetry.exporter_choices(env)] == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'",
        ),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, "'none' cannot be combined"),
    ],
)
def test_exporter_settings_that_cannot_be_honoured(env: dict[str, str], message: str) -> None:
    with pytest.raises(telemetry.TelemetryError, match=re.escape(message)):
        telemetry.exporter_choices(env)


def test_an_unknown_exporter_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin_json_nope")
    with pytest.raises(
        telemetry.TelemetryError, match="no trace exporter named 'zipkin_json_nope'"
    ):
        telemetry.build("pipectl")


def test_console_exporter_writes_each_span(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    out = io.StringIO()
    built = telemetry.build("pipectl", console=out)
    assert built is not None and built.exporting
    with built.tracer("t").start_as_current_span("hello"):
        pass
    assert json.loads(out.getvalue())["name"] == "hello"
    # The full-screen console has nowhere to print: nothing is exported, nothing stored.
    quiet = telemetry.build("pipectl-console", console=None)
    assert quiet is not None and not quiet.exporting


def _grpc_exporter_installed() -> bool:
    return any(ep.name == "otlp_proto_grpc" for ep in entry_points(group=telemetry.EXPORTER_GROUP))


@pytest.mark.skipif(_grpc_exporter_installed(), reason="the otlp-grpc extra is installed")
def test_grpc_without_its_extra_stops_cli_and_agent_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text(
        '[database]\ndsn = "postgresql://nobody@127.0.0.1:9/none"\nconnect_timeout = "1s"\n'
        '[agent]\nmetrics_address = "127.0.0.1:0"\n' + steps_toml()
    )
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "NO_COLOR": "1",
    }
    for verb in (["rerun", "rule_effectiveness_summary"], ["agent"]):
        result = subprocess.run(
            [sys.executable, "-m", "pipectl", *verb, "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in result.stderr
        assert "pip install 'pipectl[otlp-grpc]'" in result.stderr
        assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------ sampling


def test_no_housekeeping_drops_root_sql_spans_only() -> None:
    sampler = telemetry.NoHousekeeping(ALWAYS_ON)
    sql = {"db.system": "postgresql", "db.statement": "UPDATE pipectl.agents ..."}
    dropped = sampler.should_sample(None, 1, "UPDATE", SpanKind.CLIENT, sql)
    assert dropped.decision == Decision.DROP
    assert sampler.should_sample(None, 1, "step x", SpanKind.INTERNAL, {}).decision.is_sampled()
    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(1, 2, is_remote=False, trace_flags=trace.TraceFlags(1))
        )
    )
    assert sampler.should_sample(parent, 1, "UPDATE", SpanKind.CLIENT, sql).decision.is_sampled()


@contextlib.asynccontextmanager
async def traced_agent(dsn: str, body: str, exporter: InMemorySpanExporter) -> AsyncIterator[Agent]:
    """A serving in-process agent whose spans (SQL ones included) land in `exporter`."""
    provider = build_provider("test-env", exporter=exporter)
    assert provider is not None
    instrument_sql(provider)
    agent = Agent(make_loaded(dsn, None, body), name="traced", tracer_provider=provider)
    task: asyncio.Task[None] | None = None
    try:
        await agent.start()
        task = asyncio.create_task(agent.serve())
        await agent.serving.wait()
        yield agent
    finally:
        await agent.stop()
        if task is not None:
            await asyncio.wait_for(task, 5)
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        provider.shutdown()


def _is_root_sql(span: ReadableSpan) -> bool:
    return span.parent is None and "db.system" in (span.attributes or {})


async def test_heartbeats_claims_and_pool_resets_start_no_trace(database: str) -> None:
    """An idle agent heartbeats, sweeps for requests and resets pool connections: none of
    that SQL is a trace of its own; the request it then runs is exactly one trace."""
    exporter = InMemorySpanExporter()
    body = '[agent]\nheartbeat = "500ms"\n' + steps_toml()
    conn = await connect(make_config(database))
    try:
        async with traced_agent(database, body, exporter):
            for _ in range(2):  # two heartbeats after the first
                seen = await conn.fetchval("SELECT last_seen FROM pipectl.agents")
                await wait_for(
                    lambda seen=seen: conn.fetchval(
                        "SELECT last_seen > $1 FROM pipectl.agents", seen
                    ),
                    timeout=20,
                )
            target = "user_satisfaction_summary"
            request = await store.create_request(conn, RequestKind.RERUN, target)
            await wait_for(lambda: _done(conn, request.id), timeout=30)
    finally:
        await conn.close()
    spans = exporter.get_finished_spans()
    assert not [s.name for s in spans if _is_root_sql(s)]
    roots = {s.context.trace_id for s in spans if s.parent is None}
    (request_span,) = [s for s in spans if s.name == "request rerun"]
    assert request_span.parent is None  # filed by SQL without a trace context: its own root
    assert roots == {request_span.context.trace_id}


async def _done(conn: asyncpg.Connection, request_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT done_at IS NOT NULL FROM pipectl.requests WHERE id = $1", request_id
        )
    )


# ---------------------------------------------------------------------- a request is one trace

FLAKY_STEP = """
[defaults]
retry_backoff = "50ms"
retry_backoff_max = "100ms"

[[steps]]
name = "flaky"
kind = "sql"
sql = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
retries = 2
"""


async def test_a_request_its_claim_runs_and_retries_are_one_trace(database: str) -> None:
    """Filed with a traceparent (as the CLI and the console do): the agent's request span is
    a child of the filing span, the claim and the run are children of the request, and
    each retry is an attempt span of that run, never a trace of its own."""
    exporter = InMemorySpanExporter()
    cli = telemetry.build("pipectl", exporter=exporter)
    conn = await connect(make_config(database))
    try:
        async with traced_agent(database, FLAKY_STEP, exporter):
            with telemetry.filing_span(cli, "rerun", "flaky") as (filing, traceparent):
                assert traceparent is not None
                request = await store.create_request(
                    conn, RequestKind.RERUN, "flaky", traceparent=traceparent
                )
            await wait_for(lambda: _done(conn, request.id), timeout=30)
            runs = await conn.fetch(
                "SELECT attempt, trace_id, status FROM pipectl.runs WHERE request_id = $1"
                " ORDER BY attempt",
                request.id,
            )
            stored = await conn.fetchval(
                "SELECT traceparent FROM pipectl.requests WHERE id = $1", request.id
            )
    finally:
        await conn.close()
    trace_id = filing.get_span_context().trace_id
    assert stored == traceparent
    assert [(r["attempt"], r["status"]) for r in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
    ]
    assert {r["trace_id"] for r in runs} == {f"{trace_id:032x}"}
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans if not _is_root_sql(s)} == {trace_id}
    by_name = {s.name: s for s in spans}

    def parent_of(name: str) -> str:
        parent = by_name[name].parent
        assert parent is not None, name
        return next(s.name for s in spans if s.context.span_id == parent.span_id)

    assert parent_of("request rerun") == "file request rerun"
    assert parent_of("claim request") == "request rerun"
    assert parent_of("step flaky") == "request rerun"
    for attempt in (1, 2, 3):
        assert parent_of(f"step flaky attempt {attempt}") == "step flaky"
    outcome = by_name["request rerun"].attributes or {}
    assert outcome["pipectl.outcome"] == "failed"
    assert outcome["pipectl.request.id"] == request.id
    assert (by_name["step flaky"].attributes or {})["pipectl.attempts"] == 3


async def test_a_malformed_traceparent_is_refused_by_the_schema(database: str) -> None:
    conn = await connect(make_config(database))
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await store.create_request(conn, RequestKind.RERUN, "x", traceparent="00-zz")
    finally:
        await conn.close()
    assert telemetry.context_from("00-" + "0" * 32 + "-" + "0" * 16 + "-01") is None


async def test_the_cli_stores_its_trace_context_and_the_agent_continues_it(
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pipectl rerun --wait` with OTEL_TRACES_EXPORTER=console: its spans go to stderr
    (stdout stays JSON), and the agent's request span continues its trace."""
    from pipectl.cli import main

    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n' + steps_toml())
    exporter = InMemorySpanExporter()
    async with traced_agent(database, steps_toml(), exporter):
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        code = await asyncio.to_thread(
            main,
            ["rerun", "rule_effectiveness_summary", "--wait", "--json", "--config", str(config)],
        )
        monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    out, err = capsys.readouterr()
    assert code == 0, err
    filed = json.loads(out)
    assert filed["outcome"] == "succeeded"
    cli_spans = _console_spans(err)
    (filing,) = [s for s in cli_spans if s["name"] == "file request rerun"]
    assert filing["resource"]["attributes"]["service.name"] == "pipectl"
    (handled,) = [s for s in exporter.get_finished_spans() if s.name == "request rerun"]
    assert f"0x{handled.context.trace_id:032x}" == filing["context"]["trace_id"]
    assert f"0x{filed['trace_id']}" == filing["context"]["trace_id"]
    assert handled.parent is not None
    assert f"0x{handled.parent.span_id:016x}" == filing["context"]["span_id"]


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The JSON objects ConsoleSpanExporter wrote (one indented object per span)."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    at = text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            at = text.find("{", at + 1)
            continue
        if isinstance(value, dict) and "context" in value:
            spans.append(value)
        at = text.find("{", end)
    return spans


# ------------------------------------------------------------------------------ logs


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after the test (setup_logging
    replaces them)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.mark.usefixtures("root_logger")
def test_json_lines_carry_the_current_trace_and_span() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    built = telemetry.build("pipectl-agent", exporter=InMemorySpanExporter())
    assert built is not None
    logging.getLogger("t").info("outside")
    with built.tracer("t").start_as_current_span("step x") as span:
        logging.getLogger("t").warning("inside")
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and "span_id" not in outside
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"


@pytest.mark.usefixtures("root_logger")
def test_syslog_priority_prefix_only_on_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    other = tmp_path / "other"
    with journal.open("w") as to_journal, other.open("w") as elsewhere:
        info = os.fstat(to_journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        for stream in (to_journal, elsewhere):
            setup_logging("debug", "json", stream)
            log = logging.getLogger("t")
            log.debug("d")
            log.info("i")
            log.warning("w")
            log.error("e")
            log.critical("c")
    prefixes = [line[: line.index("{")] for line in journal.read_text().splitlines()]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert all(line.startswith("{") for line in other.read_text().splitlines())


# ------------------------------------------------------------------------------ systemd


class NotifySocket:
    """A NOTIFY_SOCKET of the test's own: what the agent tells systemd, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []

    def read(self) -> list[list[str]]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.messages

    def count(self, line: str) -> int:
        return sum(line in message for message in self.read())

    async def has(self, prefix: str, at_least: int = 1) -> bool:
        found = sum(any(x.startswith(prefix) for x in m) for m in self.read())
        return found >= at_least

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


def _agent(
    config: Path, dsn: str, log: Path, out: Path | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """`pipectl agent` as a process: stderr (its log) to `log`, stdout to `out`."""
    with log.open("wb") as err, (out or Path(os.devnull)).open("wb") as stdout:
        return subprocess.Popen(
            [sys.executable, "-m", "pipectl", "agent", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PIPECTL_DATABASE_URL": dsn, **env},
            stdout=stdout,
            stderr=err,
        )


@pytest.mark.slow
async def test_stopping_is_sent_once_even_while_waiting_for_the_database(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """Start-up retries (the database is down) are not stops: systemd hears STOPPING=1
    once, when SIGTERM comes."""
    config = tmp_path / "agent.toml"
    config.write_text(
        '[database]\nconnect_timeout = "1s"\n'
        '[agent]\nmetrics_address = "127.0.0.1:0"\nlog_format = "json"\n' + steps_toml()
    )
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = _agent(config, f"postgresql://nobody@127.0.0.1:{port}/x", tmp_path / "agent.log")
    try:
        await wait_for(lambda: notify_socket.has("STATUS=waiting for the database", 3), 30)
        assert notify_socket.count("STOPPING=1") == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert notify_socket.count("STOPPING=1") == 1
    assert notify_socket.count("READY=1") == 0


@pytest.mark.slow
async def test_reload_says_reloading_then_ready_and_why_it_was_rejected(
    database: str, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    config = tmp_path / "agent.toml"
    good = (
        '[agent]\nmetrics_address = "127.0.0.1:0"\nlog_format = "json"\nheartbeat = "500ms"\n'
        + steps_toml()
    )
    config.write_text(good)
    process = _agent(config, database, tmp_path / "agent.log")
    try:
        await wait_for(lambda: notify_socket.has("READY=1"), 30)
        config.write_text(good.replace('heartbeat = "500ms"', 'heartbeat = "soon"'))
        process.send_signal(signal.SIGHUP)
        await wait_for(lambda: notify_socket.has("STATUS=serving the previous configuration"), 20)
        config.write_text(good)
        process.send_signal(signal.SIGHUP)
        await wait_for(lambda: notify_socket.has("STATUS=serving; configuration reloaded"), 20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    messages = notify_socket.read()
    reloads = [m for m in messages if "RELOADING=1" in m]
    assert len(reloads) == 2
    for message in reloads:
        (usec,) = [x for x in message if x.startswith("MONOTONIC_USEC=")]
        assert int(usec.split("=")[1]) > 0
    after = [m for m in messages[messages.index(reloads[0]) + 1 :] if "READY=1" in m]
    rejected = next(x for x in after[0] if x.startswith("STATUS="))
    assert "reload rejected at" in rejected
    assert "agent.heartbeat: cannot read duration 'soon'" in rejected
    assert any(x.startswith("STATUS=serving; configuration reloaded at") for x in after[1])
    assert notify_socket.count("STOPPING=1") == 1


async def test_the_console_files_requests_with_its_trace_context(database: str) -> None:
    from pipectl.console.data import RequestIntent, file_request

    exporter = InMemorySpanExporter()
    built = telemetry.build("pipectl-console", exporter=exporter)
    conn = await connect(make_config(database))
    try:
        traced = await file_request(conn, RequestIntent("pause", "x", "vacuum"), built)
        untraced = await file_request(conn, RequestIntent("resume", "x"), None)
    finally:
        await conn.close()
    (span,) = exporter.get_finished_spans()
    assert span.name == "file request pause"
    assert span.resource.attributes["service.name"] == "pipectl-console"
    context = span.context
    assert traced.traceparent is not None
    assert traced.traceparent.startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert untraced.traceparent is None


@pytest.mark.slow
async def test_one_trace_from_the_cli_through_an_agent_process(
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two real processes, both with OTEL_TRACES_EXPORTER=console: `pipectl rerun --wait`
    files the request with its trace context; the agent's request, claim, run, attempt and
    SQL spans are in that trace, under its OTEL_SERVICE_NAME; its log line for the run
    carries the trace id; no SQL span of the agent starts a trace of its own."""
    from pipectl.cli import main

    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nmetrics_address = "127.0.0.1:0"\nlog_format = "json"\nheartbeat = "500ms"\n'
        + steps_toml()
    )
    log, spans_out = tmp_path / "agent.log", tmp_path / "agent-spans.json"
    process = _agent(
        config,
        database,
        log,
        spans_out,
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="agent-under-test",
    )
    try:
        await wait_for(lambda: _logged(log, "started"), timeout=30)
        cli_config = tmp_path / "cli.toml"
        cli_config.write_text(f'[database]\ndsn = "{database}"\n' + steps_toml())
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        code = await asyncio.to_thread(
            main,
            ["rerun", "user_satisfaction_summary", "--wait", "--json", "--config", str(cli_config)],
        )
        monkeypatch.delenv("OTEL_TRACES_EXPORTER")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out, err = capsys.readouterr()
    assert code == 0, err
    (filing,) = [s for s in _console_spans(err) if s["name"] == "file request rerun"]
    trace_id = filing["context"]["trace_id"]
    agent_spans = _console_spans(spans_out.read_text())
    assert agent_spans, "the agent printed no spans"
    by_id = {s["context"]["span_id"]: s for s in agent_spans}

    def parent(span: dict[str, Any]) -> str | None:
        parent_id = span["parent_id"]
        if parent_id == filing["context"]["span_id"]:
            return "file request rerun"
        return by_id[parent_id]["name"] if parent_id in by_id else None

    in_trace = [s for s in agent_spans if s["context"]["trace_id"] == trace_id]
    names = {s["name"]: s for s in in_trace}
    assert parent(names["request rerun"]) == "file request rerun"
    assert parent(names["claim request"]) == "request rerun"
    assert parent(names["step user_satisfaction_summary"]) == "request rerun"
    attempt = names["step user_satisfaction_summary attempt 1"]
    assert parent(attempt) == "step user_satisfaction_summary"
    assert any(
        "REFRESH" in str(s["attributes"].get("db.statement", "")) and parent(s) == attempt["name"]
        for s in in_trace
    )
    assert {s["resource"]["attributes"]["service.name"] for s in agent_spans} == {
        "agent-under-test"
    }
    root_sql = [s for s in agent_spans if s["parent_id"] is None and "db.system" in s["attributes"]]
    assert root_sql == []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    succeeded = next(
        line for line in lines if line["msg"].startswith("step user_satisfaction_summary succeeded")
    )
    assert f"0x{succeeded['trace_id']}" == trace_id
    assert json.loads(out)["trace_id"] == trace_id.removeprefix("0x")


async def _logged(log: Path, text: str) -> bool:
    return text in _read(log)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_status_line_cannot_add_an_assignment(notify_socket: NotifySocket) -> None:
    """A reason quoting the config or a server (STATUS=) stays one line."""
    from pipectl.agent.systemd import notify

    assert notify("READY=1", "STATUS=reload rejected: 'soon\nSTOPPING=1'")
    (message,) = notify_socket.read()
    assert message[0] == "READY=1"
    assert message[1].startswith("STATUS=reload rejected: 'soon")
    assert len(message) == 2 and not any(x == "STOPPING=1" for x in message)
