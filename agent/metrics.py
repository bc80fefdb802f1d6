"""Prometheus metrics of one agent, in a registry of its own.

Names follow Prometheus conventions: `pipectl_` prefix, base units (seconds, ratios 0..1),
counters end in `_total`, labels only ever take configured names (step, check, kind, status,
source, level). `_created` series are disabled: they double the series count for nothing.

Every update goes through a method here, which tells the exposition (agent/exposition.py)
that the stored /metrics body is out of date once all of its updates are made (a body
rendered in between must not pass for current); gauges set to the value they already hold
are no change, so a heartbeat that changes nothing costs no rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from pipectl import __version__
from pipectl.agent.exposition import Changes
from pipectl.model import CheckResult, CheckStatus, RunStatus

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Why the /metrics server (agent/http.py) turned a client away.
HTTP_REFUSAL_REASONS = ("connection_limit", "head_deadline", "auth_throttled")

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.changes = Changes()
        self._gauges: dict[tuple[int, tuple[str, ...]], float] = {}
        r = self.registry
        self.build_info = Gauge(
            "pipectl_build_info",
            "Always 1; labels say which pipectl runs.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        self.step_last_success = Gauge(
            "pipectl_step_last_success_timestamp_seconds",
            "Unix time of the step's last successful run.",
            ["step"],
            registry=r,
        )
        self.step_duration = Histogram(
            "pipectl_step_run_duration_seconds",
            "Duration of step runs.",
            ["step"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.step_runs = Counter(
            "pipectl_step_runs_total",
            "Step runs finished, by final status.",
            ["step", "status"],
            registry=r,
        )
        self.step_failing = Gauge(
            "pipectl_step_failing",
            "1 when the step's latest decisive run failed, 0 after a success.",
            ["step"],
            registry=r,
        )
        self.step_interval = Gauge(
            "pipectl_step_interval_seconds",
            "Time between the step's scheduled runs (alerts derive staleness from it).",
            ["step"],
            registry=r,
        )
        self.step_paused = Gauge(
            "pipectl_step_paused",
            "1 while an operator has paused the step.",
            ["step"],
            registry=r,
        )
        self.check_status = Gauge(
            "pipectl_check_status",
            "Check status after hysteresis: 0 ok, 1 warn, 2 fail, 3 error, 4 nodata.",
            ["check", "kind"],
            registry=r,
        )
        self.check_value = Gauge(
            "pipectl_check_value",
            "Last observed value of the check.",
            ["check", "kind"],
            registry=r,
        )
        self.check_silenced = Gauge(
            "pipectl_check_silenced",
            "1 while an operator has silenced the check.",
            ["check"],
            registry=r,
        )
        self.check_runs = Counter(
            "pipectl_check_runs_total",
            "Check executions, by raw result status.",
            ["check", "status"],
            registry=r,
        )
        self.anomaly_score = Gauge(
            "pipectl_check_anomaly_score",
            "Robust z-score of the last value against its baseline.",
            ["check"],
            registry=r,
        )
        self.freshness_age = Gauge(
            "pipectl_freshness_age_seconds",
            "Age of the newest row (or last refresh).",
            ["check"],
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "pipectl_cache_hit_ratio",
            "Cache hit ratio over the last check interval.",
            ["check", "source", "level"],
            registry=r,
        )
        self.cache_hits = Counter(
            "pipectl_cache_hits_total",
            "Cache hits observed between check runs.",
            ["check", "source", "level"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "pipectl_cache_lookups_total",
            "Cache lookups observed between check runs.",
            ["check", "source", "level"],
            registry=r,
        )
        self.quality_ratio = Gauge(
            "pipectl_quality_ratio",
            "Scorecard dimension (completeness, accuracy, consistency, timeliness), 0..1.",
            ["table", "dimension"],
            registry=r,
        )
        self.requests_pending = Gauge(
            "pipectl_requests_pending",
            "Requests not finished yet.",
            registry=r,
        )
        self.requests_oldest_age = Gauge(
            "pipectl_requests_oldest_pending_age_seconds",
            "Age of the oldest unfinished request (0 when none).",
            registry=r,
        )
        self.requests_done = Counter(
            "pipectl_requests_total",
            "Requests executed by this agent, by kind and outcome.",
            ["kind", "status"],
            registry=r,
        )
        self.agents_alive = Gauge(
            "pipectl_agents_alive",
            "Agents with a recent heartbeat.",
            registry=r,
        )
        self.database_up = Gauge(
            "pipectl_database_up",
            "1 when the agent reaches PostgreSQL.",
            registry=r,
        )
        self.running_runs = Gauge(
            "pipectl_step_runs_in_progress",
            "Step runs executing on this agent.",
            registry=r,
        )
        self.http_refused = Counter(
            "pipectl_metrics_http_refused_total",
            "Connections and requests the /metrics server turned away, by reason: "
            "connection_limit, head_deadline, auth_throttled.",
            ["reason"],
            registry=r,
        )
        for reason in HTTP_REFUSAL_REASONS:
            self.http_refused.labels(reason)

    def declare(self, steps: Mapping[str, float | None], checks: Iterable[tuple[str, str]]) -> None:
        """Create series for configured names so dashboards show zeros, not gaps.

        `steps` maps each step to its schedule interval in seconds (None: unscheduled)."""
        for step, interval in steps.items():
            self.step_paused.labels(step)
            self.step_failing.labels(step)
            if interval is not None:
                self._gauge(self.step_interval, interval, step)
            for status in RunStatus:
                if status.finished:
                    self.step_runs.labels(step, str(status))
        for check, kind in checks:
            self._gauge(self.check_status, CheckStatus.NODATA.metric_code, check, kind)
        self.changes.bump()

    def _gauge(self, gauge: Gauge, value: float, *labels: str) -> bool:
        """Set a gauge (a labelled child when labels are given); whether its value changed.
        The caller bumps `changes` after its last update."""
        key = (id(gauge), labels)
        if self._gauges.get(key) == value:
            return False
        self._gauges[key] = value
        target: Any = gauge.labels(*labels) if labels else gauge
        target.set(value)
        return True

    def _changed_if(self, *changed: bool) -> None:
        if any(changed):
            self.changes.bump()

    def run_finished(
        self, step: str, status: RunStatus, duration: float | None, finished_at: float
    ) -> None:
        self.step_runs.labels(step, str(status)).inc()
        if duration is not None and status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            self.step_duration.labels(step).observe(duration)
        if status == RunStatus.SUCCEEDED:
            self._gauge(self.step_last_success, finished_at, step)
            self._gauge(self.step_failing, 0, step)
        elif status == RunStatus.FAILED:
            self._gauge(self.step_failing, 1, step)
        self.changes.bump()

    def check_finished(
        self, kind: str, result: CheckResult, shown: CheckStatus, silenced: bool
    ) -> None:
        check = result.check
        self.check_runs.labels(check, str(result.status)).inc()
        self._gauge(self.check_status, shown.metric_code, check, kind)
        self._gauge(self.check_silenced, 1 if silenced else 0, check)
        if result.value is not None:
            self._gauge(self.check_value, result.value, check, kind)
        if result.anomaly_score is not None:
            self._gauge(self.anomaly_score, result.anomaly_score, check)
        if kind == "freshness" and result.value is not None:
            self._gauge(self.freshness_age, result.value, check)
        if kind == "cache":
            self._cache(check, result)
        self.changes.bump()

    def _cache(self, check: str, result: CheckResult) -> None:
        """Cache results carry per-level counts in `baseline['levels']` (checks/cache.py);
        with `baseline['deltas']` they are increments since the previous reading."""
        levels = result.baseline.get("levels")
        if not isinstance(levels, dict):
            return
        source = str(result.baseline.get("source", "unknown"))
        deltas = result.baseline.get("deltas") is True
        for level, counts in levels.items():
            if not isinstance(counts, dict):
                continue
            hits, lookups = counts.get("hits"), counts.get("lookups")
            if isinstance(hits, int | float) and isinstance(lookups, int | float) and lookups > 0:
                self._gauge(self.cache_hit_ratio, hits / lookups, check, source, str(level))
                if deltas:  # counts since the previous reading: true counter increments
                    self.cache_hits.labels(check, source, str(level)).inc(max(0, hits))
                    self.cache_lookups.labels(check, source, str(level)).inc(max(0, lookups))

    def http_refusal(self, reason: str) -> None:
        """Called from the metrics server's thread (Counter and Changes are thread-safe)."""
        self.http_refused.labels(reason).inc()
        self.changes.bump()

    def step_paused_is(self, step: str, paused: bool) -> None:
        self._changed_if(self._gauge(self.step_paused, 1 if paused else 0, step))

    def database_reachable(self, up: bool) -> None:
        self._changed_if(self._gauge(self.database_up, 1 if up else 0))

    def heartbeat_counts(self, pending: int, oldest_age: float, alive: int) -> None:
        self._changed_if(
            self._gauge(self.requests_pending, pending),
            self._gauge(self.requests_oldest_age, oldest_age),
            self._gauge(self.agents_alive, alive),
        )

    def runs_in_progress(self, count: int) -> None:
        self._changed_if(self._gauge(self.running_runs, count))

    def quality(self, table: str, dimension: str, ratio: float) -> None:
        self._changed_if(self._gauge(self.quality_ratio, ratio, table, dimension))

    def request_finished(self, kind: str, outcome: str) -> None:
        self.requests_done.labels(kind, outcome).inc()
        self.changes.bump()
