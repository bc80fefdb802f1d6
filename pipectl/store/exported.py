"""The shared state every agent exports to Prometheus, read in one round trip.

What describes the pipeline (a step failing, its last success, a check's status, the agents
alive, the request queue) is read here from the pipectl schema, not taken from what one agent
happened to run: every agent exports the same values, whichever of them ran the tick, so the
alert rules' `max by (job, ...)` is right for any number of agents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipectl.store.base import DB


@dataclass(frozen=True)
class StepExport:
    name: str
    failing: bool
    """The latest run that succeeded or failed, failed (a cancelled run decides nothing)."""
    last_success: float | None
    """Unix time of the latest successful run; None before the first."""
    paused: bool
    held: bool = False
    """The latest run that succeeded, failed or was held, was held (a gate kept the old
    content)."""


@dataclass(frozen=True)
class CheckExport:
    name: str
    kind: str
    status: str
    """After hysteresis: ok, warn, fail, error or nodata."""
    silenced: bool
    last_run: float | None
    """Unix time of the latest recorded result (any agent, any trigger); None before it."""


@dataclass(frozen=True)
class SharedState:
    """One snapshot of the shared state, taken in one statement."""

    steps: tuple[StepExport, ...]
    checks: tuple[CheckExport, ...]
    agents_alive: int
    requests_pending: int
    requests_oldest_age: float


# One statement, so one snapshot. Each step costs two probes of the runs' partial indexes
# (runs_decisive_idx, runs_last_success_idx), however long its history; checks and agents are
# a few rows each; open requests are found through requests_open_idx. `failing` and `held`
# read the latest of views.DECISIVE_STATUSES but cancelled: an operator cancelling a retry
# does not clear the failure an alert is about.
_SHARED_STATE = """
SELECT
  (SELECT coalesce(json_agg(json_build_array(
              s.name, coalesce(d.status = 'failed', false), w.at, s.paused,
              coalesce(d.status = 'held', false)) ORDER BY s.name), '[]')
     FROM pipectl.steps s
     LEFT JOIN LATERAL (
         SELECT r.status FROM pipectl.runs r
         WHERE r.step = s.name AND r.status IN ('succeeded', 'failed', 'held')
         ORDER BY r.finished_at DESC NULLS LAST, r.id DESC
         LIMIT 1
     ) d ON true
     LEFT JOIN LATERAL (
         SELECT extract(epoch FROM max(r.finished_at))::float8 AS at FROM pipectl.runs r
         WHERE r.step = s.name AND r.status = 'succeeded'
     ) w ON true
     WHERE s.enabled
  ) AS steps,
  (SELECT coalesce(json_agg(json_build_array(
              c.name, c.kind, c.status, coalesce(c.silenced_until > now(), false),
              extract(epoch FROM c.last_result_at)::float8) ORDER BY c.name), '[]')
     FROM pipectl.checks c
     WHERE c.enabled
  ) AS checks,
  (SELECT count(*) FROM pipectl.agents
    WHERE stopped_at IS NULL AND lost_at IS NULL
      AND last_seen > now() - make_interval(secs => heartbeat_seconds * 3)
  ) AS alive,
  (SELECT count(*) FROM pipectl.requests WHERE done_at IS NULL) AS pending,
  (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
     FROM pipectl.requests WHERE done_at IS NULL) AS oldest
"""


async def shared_state(db: DB) -> SharedState:
    """The steps and checks published as enabled, with their shared state; agents alive;
    open requests and the age of the oldest."""
    row = await db.fetchrow(_SHARED_STATE)
    assert row is not None
    return SharedState(
        steps=tuple(
            StepExport(str(name), bool(failing), _seconds(at), bool(paused), bool(held))
            for name, failing, at, paused, held in _json(row["steps"])
        ),
        checks=tuple(
            CheckExport(str(name), str(kind), str(status), bool(silenced), _seconds(at))
            for name, kind, status, silenced, at in _json(row["checks"])
        ),
        agents_alive=int(row["alive"]),
        requests_pending=int(row["pending"]),
        requests_oldest_age=float(row["oldest"]),
    )


def _json(value: object) -> list[list[object]]:
    """json columns arrive as text unless the connection decodes them."""
    data = json.loads(value) if isinstance(value, str) else value
    assert isinstance(data, list)
    return data


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
