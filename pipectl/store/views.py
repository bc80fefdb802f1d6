"""Read models for the console and the CLI: immutable snapshots built in few round trips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from pipectl.model import Agent, CheckStatus, Run, RunStatus
from pipectl.store.agents import alive_agents
from pipectl.store.base import DB
from pipectl.store.runs import _RUN_COLUMNS, _run

DECISIVE_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "held")
"""The run statuses that decide a step's outcome (queued, running and skipped decide nothing):
the predicate of the partial index runs_decisive_idx (sql/pipectl/0011_h17_gates.sql)."""

DECISIVE = "(" + ", ".join(f"'{status}'" for status in DECISIVE_STATUSES) + ")"
"""DECISIVE_STATUSES as an SQL list, for `status IN {DECISIVE}`."""


def decisive_run(step: str, alias: str = "d") -> str:
    """A step's latest decisive run (by finish time), as a subquery for a LATERAL join (`step`
    is the SQL expression naming the step): one probe of runs_decisive_idx."""
    return f"""(
        SELECT {alias}.* FROM pipectl.runs {alias}
        WHERE {alias}.step = {step} AND {alias}.status IN {DECISIVE}
        ORDER BY {alias}.finished_at DESC NULLS LAST, {alias}.id DESC LIMIT 1
    )"""


def state_run(step: str) -> str:
    """The run that decides a step's shown state, as a subquery for a LATERAL join (`step`
    is the SQL expression naming the step): its newest unfinished run ("running"), else its
    latest decisive run (succeeded, failed, cancelled, held: by finish time), else its newest
    skipped run. A skip decides nothing while the step has a decisive run: a tick skipped
    because a manual run held the step never hides that run's success, before or after it.
    Three index probes (runs_step_unfinished_idx, runs_decisive_idx, runs_step_skipped_idx).
    `status`, the console and the agents' metrics all read a step's state through it."""
    return f"""(
        SELECT * FROM (
            (SELECT u.*, 0 AS state_rank FROM pipectl.runs u
             WHERE u.step = {step} AND u.status IN ('queued', 'running')
             ORDER BY u.queued_at DESC, u.id DESC LIMIT 1)
            UNION ALL
            (SELECT d.*, 1 FROM {decisive_run(step)} d)
            UNION ALL
            (SELECT k.*, 2 FROM pipectl.runs k
             WHERE k.step = {step} AND k.status = 'skipped'
             ORDER BY k.queued_at DESC, k.id DESC LIMIT 1)
        ) candidates
        ORDER BY state_rank
        LIMIT 1
    )"""


async def state_runs(db: DB, steps: Sequence[str]) -> dict[str, Run]:
    """Each step's state run (`state_run`); steps that never ran are left out."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS}
        FROM unnest($1::text[]) AS s(step)
        CROSS JOIN LATERAL {state_run("s.step")} r
        LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        """,
        list(steps),
    )
    return {r["step"]: _run(r) for r in rows}


async def latest_outcomes(db: DB, steps: Sequence[str]) -> dict[str, Run]:
    """The latest decisive run (`decisive_run`) of each step that has one: one probe of
    runs_decisive_idx per step, however long the history."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS}
        FROM unnest($1::text[]) AS s(step)
        CROSS JOIN LATERAL {decisive_run("s.step", "x")} r
        LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        """,
        list(steps),
    )
    return {r["step"]: _run(r) for r in rows}


def state_word(paused: bool, state: Run | None, decisive: Run | None) -> str:
    """`StepRow.state` from its parts: whether the step is paused, its state run
    (`state_run`) and its latest decisive run (`decisive_run`)."""
    if paused:
        return "paused"
    if state is None:
        return "never"
    if state.status in (RunStatus.QUEUED, RunStatus.RUNNING):
        failed = decisive is not None and decisive.status == RunStatus.FAILED
        return "failing" if failed else "running"
    return "ok" if state.status == RunStatus.SUCCEEDED else str(state.status)


@dataclass(frozen=True)
class StepRow:
    name: str
    kind: str
    relation: str | None
    schedule: str | None
    depends_on: tuple[str, ...]
    paused: bool
    paused_by: str | None
    paused_reason: str | None
    next_run_at: datetime | None
    last_run: Run | None
    """The newest run, whatever its status (a skipped tick included)."""
    last_success_at: datetime | None
    state_run: Run | None = None
    """The run that decides the state (`state_run`): not always the newest one."""
    last_decisive: Run | None = None
    """The latest decisive run (`decisive_run`): what an unfinished state run follows."""

    @property
    def state(self) -> str:
        """One word for a step: paused, running, failing, ok, failed, held, skipped, cancelled
        or never. `failing` is a step whose latest decisive run failed while its next attempt
        is queued or running: red between attempts until one succeeds, never "running".
        Skipped only when the step has no decisive run at all. The console, the incidents and
        `pipectl status` all read this one word."""
        return state_word(self.paused, self.state_run, self.last_decisive)

    @property
    def health(self) -> CheckStatus:
        """The state judged like a check, for colours and exit codes."""
        return {
            "ok": CheckStatus.OK,
            "running": CheckStatus.OK,
            "never": CheckStatus.NODATA,
            "paused": CheckStatus.WARN,
            "skipped": CheckStatus.WARN,
            "cancelled": CheckStatus.WARN,
            "held": CheckStatus.WARN,
            "failed": CheckStatus.FAIL,
            "failing": CheckStatus.FAIL,
        }[self.state]


@dataclass(frozen=True)
class CheckRow:
    name: str
    kind: str
    target: str | None
    status: CheckStatus
    status_since: datetime
    value: float | None
    expected_low: float | None
    expected_high: float | None
    message: str
    last_result_at: datetime | None
    silenced_until: datetime | None
    silenced_by: str | None
    silence_reason: str | None

    def silenced(self, now: datetime) -> bool:
        return self.silenced_until is not None and self.silenced_until > now


@dataclass(frozen=True)
class StatusSnapshot:
    taken_at: datetime
    steps: tuple[StepRow, ...]
    checks: tuple[CheckRow, ...]
    agents: tuple[Agent, ...]
    pending_requests: int
    cache: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> CheckStatus:
        """Worst of step health and unsilenced check status; no live agent is a warning."""
        statuses = [s.health for s in self.steps]
        statuses += [c.status for c in self.checks if not c.silenced(self.taken_at)]
        if self.steps and not self.agents:
            statuses.append(CheckStatus.WARN)
        return max(statuses, key=lambda s: s.severity, default=CheckStatus.OK)

    def check_counts(self) -> dict[CheckStatus, int]:
        counts = dict.fromkeys(CheckStatus, 0)
        for check in self.checks:
            counts[check.status] += 1
        return counts


async def status_snapshot(db: DB) -> StatusSnapshot:
    """Steps with their newest run, the run that decides their state and their latest decisive
    run, checks with their latest result, live agents, open requests. Retired definitions
    (enabled = false) are left out."""
    now = datetime.now(UTC)
    step_rows = await db.fetch(
        f"""
        SELECT s.name, s.kind, s.relation, s.schedule, s.depends_on, s.paused, s.paused_by,
               s.paused_reason, s.next_run_at,
               (SELECT max(finished_at) FROM pipectl.runs x
                 WHERE x.step = s.name AND x.status = 'succeeded') AS last_success_at,
               last.*
        FROM pipectl.steps s
        LEFT JOIN LATERAL (
            SELECT {_RUN_COLUMNS} FROM pipectl.runs r
            LEFT JOIN pipectl.agents a ON a.id = r.agent_id
            WHERE r.step = s.name ORDER BY r.queued_at DESC, r.id DESC LIMIT 1
        ) last ON true
        WHERE s.enabled
        ORDER BY s.name
        """
    )
    names = [r["name"] for r in step_rows]
    deciding = await state_runs(db, names)
    decisive = await latest_outcomes(db, names)
    steps = tuple(_step_row(r, deciding.get(r["name"]), decisive.get(r["name"])) for r in step_rows)
    check_rows = await db.fetch(
        """
        SELECT c.name, c.kind, c.target, c.status, c.status_since, c.last_value AS value,
               c.last_result_at, c.silenced_until, c.silenced_by, c.silence_reason,
               r.expected_low, r.expected_high, coalesce(r.message, '') AS message
        FROM pipectl.checks c
        LEFT JOIN LATERAL (
            SELECT expected_low, expected_high, message FROM pipectl.check_results
            WHERE check_name = c.name ORDER BY observed_at DESC LIMIT 1
        ) r ON true
        WHERE c.enabled
        ORDER BY c.name
        """
    )
    checks = tuple(CheckRow(**{**dict(r), "status": CheckStatus(r["status"])}) for r in check_rows)
    pending = await db.fetchval("SELECT count(*) FROM pipectl.requests WHERE done_at IS NULL")
    agents = tuple(await alive_agents(db))
    return StatusSnapshot(now, steps, checks, agents, int(pending))


def _step_row(row: asyncpg.Record, state: Run | None, decisive: Run | None) -> StepRow:
    data = dict(row)
    last = None
    if data.get("id") is not None:
        last = _run({k: data[k] for k in _RUN_KEYS})
    return StepRow(
        name=data["name"],
        kind=data["kind"],
        relation=data["relation"],
        schedule=data["schedule"],
        depends_on=tuple(data["depends_on"] or ()),
        paused=data["paused"],
        paused_by=data["paused_by"],
        paused_reason=data["paused_reason"],
        next_run_at=data["next_run_at"],
        last_run=last,
        last_success_at=data["last_success_at"],
        state_run=state,
        last_decisive=decisive,
    )


_RUN_KEYS = (
    "id",
    "step",
    "trigger",
    "status",
    "queued_at",
    "started_at",
    "finished_at",
    "scheduled_for",
    "requested_by",
    "request_id",
    "attempt",
    "agent_id",
    "agent_name",
    "rows",
    "error",
    "detail",
    "trace_id",
)
