"""The nouns pipectl shares: statuses, runs, results, requests. Plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

# Who asked for a check result: the agent's schedule, a request, or `pipectl check`.
CheckTrigger = Literal["schedule", "manual", "cli"]


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    HELD = "held"
    """Refreshed, but a gate failed on the new content: rolled back, the old content stays."""

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RETRY = "retry"
    UPSTREAM = "upstream"


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    NODATA = "nodata"

    @property
    def severity(self) -> int:
        """For "worst of": ok < nodata < warn < error < fail."""
        return _SEVERITY[self]

    @property
    def metric_code(self) -> int:
        """The number exported as pipectl_check_status (0 ok .. 4 nodata)."""
        return _METRIC_CODE[self]

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warn, 2 fail or error (nodata counts as ok: nothing to judge yet)."""
        return {CheckStatus.WARN: 1, CheckStatus.FAIL: 2, CheckStatus.ERROR: 2}.get(self, 0)


_SEVERITY = {
    CheckStatus.OK: 0,
    CheckStatus.NODATA: 1,
    CheckStatus.WARN: 2,
    CheckStatus.ERROR: 3,
    CheckStatus.FAIL: 4,
}
_METRIC_CODE = {
    CheckStatus.OK: 0,
    CheckStatus.WARN: 1,
    CheckStatus.FAIL: 2,
    CheckStatus.ERROR: 3,
    CheckStatus.NODATA: 4,
}


def worst(statuses: list[CheckStatus]) -> CheckStatus:
    return max(statuses, key=lambda s: s.severity, default=CheckStatus.OK)


class RequestKind(StrEnum):
    RERUN = "rerun"
    CHECK = "check"
    PAUSE = "pause"
    RESUME = "resume"
    SILENCE = "silence"
    UNSILENCE = "unsilence"
    PUBLISH = "publish"
    """Publish a held step anyway: run it once more with its gates measured, not enforced."""


MAX_SILENCE = timedelta(days=30)
"""The longest silence a request may ask for (pipectl.request_args.SilenceArgs)."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Run:
    id: int
    step: str
    trigger: Trigger
    status: RunStatus
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    scheduled_for: datetime | None = None
    requested_by: str | None = None
    request_id: int | None = None
    attempt: int = 1
    agent_id: UUID | None = None
    agent_name: str | None = None
    rows: int | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class CheckResult:
    """What a check concluded about one observation. Produced by checks/, stored by store."""

    check: str
    status: CheckStatus
    value: float | None
    message: str
    observed_at: datetime
    threshold: dict[str, Any] = field(default_factory=dict)
    expected_low: float | None = None
    expected_high: float | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    duration_ms: float | None = None
    samples: tuple[Sample, ...] = ()
    anomaly_score: float | None = None


@dataclass(frozen=True)
class Sample:
    series: str
    ts: datetime
    value: float
    labels: dict[str, Any] = field(default_factory=dict)
    source: str = "live"
    anomaly: bool = False


@dataclass(frozen=True)
class Request:
    id: int
    kind: RequestKind
    target: str
    # As stored: JSON chosen by whoever inserted the row. Read it through
    # pipectl.request_args (parse_args / describe_args), never directly.
    args: object
    reason: str
    requested_by: str
    created_at: datetime
    claimed_by: UUID | None = None
    claimed_at: datetime | None = None
    done_at: datetime | None = None
    outcome: Outcome | None = None
    detail: str | None = None
    traceparent: str | None = None
    """W3C trace context of the span that filed it (the agent continues that trace)."""

    @property
    def state(self) -> str:
        if self.done_at is not None:
            return str(self.outcome or "done")
        return "claimed" if self.claimed_at is not None else "queued"


@dataclass(frozen=True)
class Agent:
    id: UUID
    name: str
    host: str
    pid: int
    version: str
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    lost_at: datetime | None
    heartbeat_seconds: float
    status_line: str | None = None


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    kind: str
    subject: str
    actor: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
