"""Prometheus metrics of one agent, in a registry of its own.

Names follow Prometheus conventions: `pipectl_` prefix, base units (seconds, ratios 0..1),
counters end in `_total`, labels only ever take configured names (step, check, kind, status,
source, level). `_created` series are disabled: they double the series count for nothing.

Two kinds of series. **Shared state** (a step failing, its last success, paused; a check's
status, silence and last run; agents alive; the request queue) describes the pipeline, not
this process: it is read from the database at every heartbeat (store.shared_state) and
exported from that one snapshot (`SharedCollector`), so every agent exports the same values
whichever of them ran the tick, and rules take `max by (job, ...)`. While the database is
unreachable these series are gone (not left stale) and `pipectl_agents_alive` is 0.
**Per-agent** series are what only this process knows: its runs and requests (counters,
durations), the values its own check runs observed (check_value, anomaly score, freshness
age, cache ratios and counts), `pipectl_database_up`, and the process itself (`process_*`,
`python_*`, in a registry of their own rendered at every scrape, see agent/exposition.py).

Every update goes through a method here, which tells the exposition (agent/exposition.py)
that the stored /metrics body is out of date once all of its updates are made (a body
rendered in between must not pass for current); gauges set to the value they already hold
are no change, so a heartbeat that changes nothing costs no rendering.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipectl import __version__
from pipectl.agent.exposition import Changes
from pipectl.model import CheckResult, CheckStatus, RunStatus
from pipectl.store import SharedState

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Why the /metrics server (agent/http.py) turned a client away.
HTTP_REFUSAL_REASONS = ("connection_limit", "head_deadline", "auth_throttled")

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class SharedCollector(Collector):
    """The shared-state series, rendered from the latest snapshot (None: the database is
    unreachable, or was never reached: only `pipectl_agents_alive 0`)."""

    def __init__(self) -> None:
        self.state: SharedState | None = None

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.state)

    @staticmethod
    def _families(state: SharedState | None) -> Iterator[Metric]:
        last_success = GaugeMetricFamily(
            "pipectl_step_last_success_timestamp_seconds",
            "Unix time of the step's last successful run (any agent).",
            labels=["step"],
        )
        failing = GaugeMetricFamily(
            "pipectl_step_failing",
            "1 when the step's latest run that succeeded or failed, failed (any agent).",
            labels=["step"],
        )
        held = GaugeMetricFamily(
            "pipectl_step_held",
            "1 when the step's latest run that succeeded, failed or was held, was held: a gate"
            " failed on the new content and readers keep the previous content (any agent).",
            labels=["step"],
        )
        paused = GaugeMetricFamily(
            "pipectl_step_paused", "1 while an operator has paused the step.", labels=["step"]
        )
        status = GaugeMetricFamily(
            "pipectl_check_status",
            "Check status after hysteresis: 0 ok, 1 warn, 2 fail, 3 error, 4 nodata.",
            labels=["check", "kind"],
        )
        silenced = GaugeMetricFamily(
            "pipectl_check_silenced",
            "1 while an operator has silenced the check.",
            labels=["check"],
        )
        last_run = GaugeMetricFamily(
            "pipectl_check_last_run_timestamp_seconds",
            "Unix time of the check's latest recorded result (any agent, any trigger).",
            labels=["check"],
        )
        alive = GaugeMetricFamily(
            "pipectl_agents_alive",
            "Agents with a recent heartbeat in the database (0 while it is unreachable).",
        )
        pending = GaugeMetricFamily("pipectl_requests_pending", "Requests not finished yet.")
        oldest = GaugeMetricFamily(
            "pipectl_requests_oldest_pending_age_seconds",
            "Age of the oldest unfinished request (0 when none).",
        )
        if state is not None:
            for step in state.steps:
                failing.add_metric([step.name], 1 if step.failing else 0)
                held.add_metric([step.name], 1 if step.held else 0)
                paused.add_metric([step.name], 1 if step.paused else 0)
                if step.last_success is not None:
                    last_success.add_metric([step.name], step.last_success)
            for check in state.checks:
                status.add_metric([check.name, check.kind], _status_code(check.status))
                silenced.add_metric([check.name], 1 if check.silenced else 0)
                if check.last_run is not None:
                    last_run.add_metric([check.name], check.last_run)
            alive.add_metric([], state.agents_alive)
            pending.add_metric([], state.requests_pending)
            oldest.add_metric([], state.requests_oldest_age)
        else:
            alive.add_metric([], 0)
        yield from (last_success, failing, held, paused, status, silenced, last_run, alive, pending)
        yield oldest


def _status_code(status: str) -> int:
    try:
        return CheckStatus(status).metric_code
    except ValueError:
        return CheckStatus.ERROR.metric_code


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.changes = Changes()
        self._gauges: dict[tuple[int, tuple[str, ...]], float] = {}
        r = self.registry
        # The process's own figures change by the second: rendered at every scrape.
        self.process_registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.process_registry)
        PlatformCollector(registry=self.process_registry)
        GCCollector(registry=self.process_registry)
        self.shared_state = SharedCollector()
        r.register(self.shared_state)
        self.build_info = Gauge(
            "pipectl_build_info",
            "Always 1; labels say which pipectl runs.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        self.step_duration = Histogram(
            "pipectl_step_run_duration_seconds",
            "Duration of step runs on this agent.",
            ["step"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.step_runs = Counter(
            "pipectl_step_runs_total",
            "Step runs finished on this agent, by final status.",
            ["step", "status"],
            registry=r,
        )
        self.step_interval = Gauge(
            "pipectl_step_interval_seconds",
            "Time between the step's scheduled runs (alerts derive staleness from it).",
            ["step"],
            registry=r,
        )
        self.check_interval = Gauge(
            "pipectl_check_interval_seconds",
            "Time between the check's scheduled runs (alerts derive a stalled scheduler from it).",
            ["check"],
            registry=r,
        )
        self.check_value = Gauge(
            "pipectl_check_value",
            "Last value this agent observed for the check.",
            ["check", "kind"],
            registry=r,
        )
        self.check_runs = Counter(
            "pipectl_check_runs_total",
            "Check executions on this agent, by raw result status.",
            ["check", "status"],
            registry=r,
        )
        self.incremental_rows_read = Counter(
            "pipectl_incremental_rows_read_total",
            "Source rows an incremental step's committed refreshes on this agent aggregated"
            " (re-read bucket, invalidated buckets and the window's edge).",
            ["step"],
            registry=r,
        )
        self.incremental_rows_arrived = Counter(
            "pipectl_incremental_rows_arrived_total",
            "Of those, rows whose time was at or after the previous refresh's reference time.",
            ["step"],
            registry=r,
        )
        self.check_ticks_skipped = Counter(
            "pipectl_check_ticks_skipped_total",
            "Scheduled check ticks this agent skipped because the check's previous tick had"
            " not finished (coalesced into it): the agent's checks are behind.",
            ["check"],
            registry=r,
        )
        self.anomaly_score = Gauge(
            "pipectl_check_anomaly_score",
            "Robust z-score of the last value this agent observed against its baseline.",
            ["check"],
            registry=r,
        )
        self.freshness_age = Gauge(
            "pipectl_freshness_age_seconds",
            "Age of the newest row (or last refresh) when this agent last checked.",
            ["check"],
            registry=r,
        )
        self.cache_hit_ratio = Gauge(
            "pipectl_cache_hit_ratio",
            "Cache hit ratio over the last check interval this agent measured.",
            ["check", "source", "level"],
            registry=r,
        )
        self.cache_hits = Counter(
            "pipectl_cache_hits_total",
            "Cache hits observed between check runs (each interval counted by one agent).",
            ["check", "source", "level"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "pipectl_cache_lookups_total",
            "Cache lookups observed between check runs (each interval counted by one agent).",
            ["check", "source", "level"],
            registry=r,
        )
        self.quality_ratio = Gauge(
            "pipectl_quality_ratio",
            "Scorecard dimension (completeness, accuracy, consistency, timeliness), 0..1.",
            ["table", "dimension"],
            registry=r,
        )
        self.requests_done = Counter(
            "pipectl_requests_total",
            "Requests executed by this agent, by kind and outcome.",
            ["kind", "status"],
            registry=r,
        )
        self.database_up = Gauge(
            "pipectl_database_up",
            "1 when this agent reaches PostgreSQL (0 from the start until it first does).",
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

    def declare(self, steps: Mapping[str, float | None], checks: Mapping[str, float]) -> None:
        """What the configuration says: each step's schedule interval in seconds (None:
        unscheduled) and each enabled check's; a run counter of every outcome per step, so
        dashboards show zeros, not gaps. Names no longer configured lose their intervals."""
        self._replace(
            self.step_interval,
            {(step,): interval for step, interval in steps.items() if interval is not None},
        )
        self._replace(self.check_interval, {(check,): every for check, every in checks.items()})
        for step in steps:
            for status in RunStatus:
                if status.finished:
                    self.step_runs.labels(step, str(status))
        self.changes.bump()

    def shared(self, state: SharedState | None) -> None:
        """Export the shared state from one snapshot read from the database (None: it is
        unreachable: the shared series go away, agents alive 0)."""
        if state != self.shared_state.state:
            self.shared_state.state = state
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

    def _replace(self, gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
        """Set a labelled gauge to exactly these children: the others are removed."""
        for key in [k for k in self._gauges if k[0] == id(gauge) and k[1] not in values]:
            del self._gauges[key]
            gauge.remove(*key[1])
        for labels, value in values.items():
            self._gauge(gauge, value, *labels)

    def _changed_if(self, *changed: bool) -> None:
        if any(changed):
            self.changes.bump()

    def run_finished(self, step: str, status: RunStatus, duration: float | None) -> None:
        self.step_runs.labels(step, str(status)).inc()
        if duration is not None and status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            self.step_duration.labels(step).observe(duration)
        self.changes.bump()

    def incremental_refreshed(self, step: str, read: int, arrived: int) -> None:
        self.incremental_rows_read.labels(step).inc(read)
        self.incremental_rows_arrived.labels(step).inc(arrived)

    def check_tick_skipped(self, check: str) -> None:
        self.check_ticks_skipped.labels(check).inc()

    def check_finished(self, kind: str, result: CheckResult) -> None:
        check = result.check
        self.check_runs.labels(check, str(result.status)).inc()
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

    def database_reachable(self, up: bool) -> None:
        self._changed_if(self._gauge(self.database_up, 1 if up else 0))

    def runs_in_progress(self, count: int) -> None:
        self._changed_if(self._gauge(self.running_runs, count))

    def quality(self, table: str, dimension: str, ratio: float) -> None:
        self._changed_if(self._gauge(self.quality_ratio, ratio, table, dimension))

    def request_finished(self, kind: str, outcome: str) -> None:
        self.requests_done.labels(kind, outcome).inc()
        self.changes.bump()
