"""Metrics, alert rules, traces and the systemd unit, checked with the real tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipectl import alert_rules, store
from pipectl.agent.http import MetricsServer
from pipectl.agent.tracing import build_provider, instrument_sql
from pipectl.cli import main
from pipectl.model import RequestKind
from tests.agent.conftest import running_agent, steps_toml
from tests.helpers import wait_for

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


def test_dashboard_uses_only_exported_metrics_and_recording_rules(scraped: str) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "pipectl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    from pipectl.agent.metrics import AgentMetrics

    exported = {metric.name for metric in AgentMetrics().registry.collect()} | {
        m + suffix
        for m in {m.name for m in AgentMetrics().registry.collect()}
        for suffix in ("_total", "_bucket", "_count", "_sum")
    }
    for expr in exprs:
        for name in re.findall(r"\b(pipectl[_:][\w:]+)", expr):
            assert name in exported or name in recorded, f"{name} in {expr!r}"


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
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == run_span.context.span_id
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
        value = agent.metrics.registry.get_sample_value(
            "pipectl_requests_total", {"kind": "rerun", "status": "rejected"}
        )
    assert value == 1.0


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
