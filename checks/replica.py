"""Probing a streaming replica: replication lag, and checks judged as of the replica's data.

A replica shows the primary as it was `lag` ago. Its probes are therefore judged at
`now - lag`: a freshness age is the age the data had at that instant (the replication lag is
not counted as staleness), and a window ends where the replica's data ends (a lagging replica
does not look like a drop in volume). A replica further behind than `replica_max_lag` is not
probed: its checks are `error` with "replica 6m behind", never "stale data".

Lag is `now - pg_last_xact_replay_timestamp()` while the replica has WAL it has received but
not replayed; a replica that replayed all it received is not behind (an idle primary writes no
commits, so the time of the last one replayed says nothing then), and neither is one that has
replayed nothing yet since it started. `now` is the instant the checks are judged at, so the
window a probe reads ends exactly at the last commit the replica shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from redis.asyncio import Redis

from pipectl.checks.engine import CheckEngine
from pipectl.config import CheckBase
from pipectl.durations import format_duration, humanize_age
from pipectl.model import CheckResult, CheckStatus
from pipectl.store.base import Conn

_LAG_SQL = """
SELECT pg_is_in_recovery() AS replica,
       CASE WHEN pg_last_wal_receive_lsn() IS DISTINCT FROM pg_last_wal_replay_lsn()
            THEN pg_last_xact_replay_timestamp()
       END AS replayed_at
"""


@dataclass(frozen=True)
class ReplicaState:
    replica: bool
    """The server is in recovery (a standby); False: `replica_dsn` names a primary."""
    replayed_at: datetime | None
    """Commit time of the last transaction replayed, while WAL received waits to be replayed;
    None when the replica is not behind (or has replayed nothing yet)."""

    def lag(self, now: datetime) -> timedelta:
        """How far behind `now` the replica's data is (never negative)."""
        if self.replayed_at is None:
            return timedelta(0)
        return max(now - self.replayed_at, timedelta(0))


async def replica_state(conn: Conn) -> ReplicaState:
    row = await conn.fetchrow(_LAG_SQL)
    assert row is not None
    return ReplicaState(bool(row["replica"]), row["replayed_at"])


def on_replica(check: CheckBase) -> bool:
    """Whether the check's probe may read the replica: all but the cache checks of PostgreSQL's
    buffers (they measure the primary's own cache) and of Redis (no database load to move,
    and their previous reading must be the latest one recorded)."""
    return check.kind != "cache" or getattr(check, "source", None) == "app"


def behind(
    names: Sequence[str], lag: timedelta, limit: timedelta, now: datetime
) -> dict[str, CheckResult]:
    """The results of checks not probed because the replica is too far behind."""
    message = (
        f"replica {humanize_age(lag.total_seconds())} behind (limit"
        f" {format_duration(limit)}): not checked, its data is older than the primary's"
    )
    return {
        name: CheckResult(
            check=name,
            status=CheckStatus.ERROR,
            value=None,
            message=message,
            observed_at=now,
            baseline={"replica_lag_s": lag.total_seconds()},
        )
        for name in names
    }


def as_of_replica(result: CheckResult, lag: timedelta, now: datetime) -> CheckResult:
    """A result judged at `now - lag`, said in its message and baseline, dated `now`."""
    if lag <= timedelta(0):
        return replace(result, observed_at=now, baseline={**result.baseline, "replica_lag_s": 0.0})
    note = f" (on a replica {humanize_age(lag.total_seconds())} behind: judged as of its data)"
    return replace(
        result,
        observed_at=now,
        message=result.message + note,
        baseline={**result.baseline, "replica_lag_s": lag.total_seconds()},
    )


async def run_on_replica(
    engine: CheckEngine,
    names: Sequence[str],
    conn: Conn,
    *,
    max_lag: timedelta,
    redis: Redis | None,
    trigger: Literal["schedule", "manual", "cli"],
    now: datetime,
    state: ReplicaState | None = None,
) -> dict[str, CheckResult]:
    """`engine.run_many` on a replica's connection, judged as of the replica's data; checks
    of a replica more than `max_lag` behind are `error`, not probed. `state` is measured on
    `conn` when not given (tests pass a fixed one)."""
    state = state or await replica_state(conn)
    lag = state.lag(now)
    if lag > max_lag:
        return behind(names, lag, max_lag, now)
    found = await engine.run_many(names, conn, redis=redis, trigger=trigger, now=now - lag)
    return {name: as_of_replica(result, lag, now) for name, result in found.items()}
