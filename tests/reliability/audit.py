"""The audit every fault scenario ends with, written once.

`await audit_alive(dsn, after)` while the agents still run: some agent heartbeats and has
finished a successful run after the fault. `await audit_final(dsn)` once every agent stopped
(or was declared lost):

- no run is left queued or running;
- every request has exactly one outcome (one `request.done` audit event, one filing event)
  and at most one set of runs: runs of agents declared lost are all closed as failed or
  cancelled, and the runs of live agents come from one agent, one attempt chain per step;
- every agent stopped cleanly or was declared lost by a peer;
- each materialized summary equals a fresh computation of its defining query.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from pipectl.identifiers import quote_ident

FLOAT_TYPES = ("real", "double precision", "numeric")


@dataclass
class AuditReport:
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    summaries_checked: list[str] = field(default_factory=list)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, timeout=10)


async def audit_alive(
    dsn: str, after: datetime, timeout: float = 60.0, steps: Sequence[str] | None = None
) -> None:
    """Some agent has a fresh heartbeat and each of `steps` (default: any step) has
    succeeded after `after`. Waits up to `timeout` for both."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            conn = await _connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            last = exc
            await asyncio.sleep(0.5)
            continue
        try:
            alive = await conn.fetchval(
                "SELECT count(*) FROM pipectl.agents WHERE stopped_at IS NULL AND lost_at IS NULL"
                " AND last_seen > now() - make_interval(secs => heartbeat_seconds * 3)"
            )
            succeeded = {
                r["step"]
                for r in await conn.fetch(
                    "SELECT DISTINCT step FROM pipectl.runs"
                    " WHERE status = 'succeeded' AND started_at > $1",
                    after,
                )
            }
        finally:
            await conn.close()
        wanted = set(steps) if steps else None
        if alive and (succeeded >= wanted if wanted else succeeded):
            return
        last = f"alive agents: {alive}, steps succeeded since the fault: {sorted(succeeded)}"
        await asyncio.sleep(0.25)
    raise AssertionError(f"the agent is not back to work: {last}")


async def audit_final(dsn: str, summaries: Sequence[str] = ()) -> AuditReport:
    """Everything the scenario must leave true once the agents are gone (see the module)."""
    conn = await _connect(dsn)
    try:
        report = AuditReport()
        await _no_unfinished_runs(conn)
        await _agents_closed(conn)
        await _requests_exactly_once(conn, report)
        for summary in summaries or await _materialized(conn):
            await _summary_consistent(conn, summary)
            report.summaries_checked.append(summary)
        report.runs = await conn.fetchval("SELECT count(*) FROM pipectl.runs")
        return report
    finally:
        await conn.close()


async def _no_unfinished_runs(conn: asyncpg.Connection) -> None:
    stuck = await conn.fetch(
        "SELECT r.id, r.step, r.status, a.name AS agent FROM pipectl.runs r"
        " LEFT JOIN pipectl.agents a ON a.id = r.agent_id"
        " WHERE r.status IN ('queued', 'running')"
    )
    assert not stuck, f"runs left unfinished: {[dict(r) for r in stuck]}"


async def _agents_closed(conn: asyncpg.Connection) -> None:
    open_agents = await conn.fetch(
        "SELECT name, pid FROM pipectl.agents WHERE stopped_at IS NULL AND lost_at IS NULL"
    )
    assert not open_agents, (
        f"agents neither stopped nor declared lost: {[dict(r) for r in open_agents]}"
    )


async def _requests_exactly_once(conn: asyncpg.Connection, report: AuditReport) -> None:
    requests = await conn.fetch(
        "SELECT id, kind, target, outcome, done_at, args FROM pipectl.requests ORDER BY id"
    )
    report.requests = len(requests)
    unfinished = [dict(r) for r in requests if r["done_at"] is None or r["outcome"] is None]
    assert not unfinished, f"requests without an outcome: {unfinished[:10]}"
    outcomes: dict[str, int] = defaultdict(int)
    for r in requests:
        outcomes[r["outcome"]] += 1
    report.outcomes = dict(outcomes)
    events = await conn.fetch(
        """
        SELECT (detail->>'request_id')::bigint AS id,
               count(*) FILTER (WHERE kind = 'request.done') AS done,
               count(*) FILTER (WHERE kind <> 'request.done') AS filed
        FROM pipectl.events WHERE kind LIKE 'request.%' GROUP BY 1
        """
    )
    by_id = {e["id"]: (e["done"], e["filed"]) for e in events}
    wrong = {r["id"]: by_id.get(r["id"]) for r in requests if by_id.get(r["id"]) != (1, 1)}
    assert not wrong, (
        f"requests not audited exactly once (done, filed): {dict(list(wrong.items())[:10])}"
    )
    runs = await conn.fetch(
        """
        SELECT r.request_id, r.agent_id, r.step, r.status, r.attempt, r.error,
               a.lost_at IS NOT NULL AS agent_lost
        FROM pipectl.runs r LEFT JOIN pipectl.agents a ON a.id = r.agent_id
        WHERE r.request_id IS NOT NULL
        ORDER BY r.id
        """
    )
    sets: dict[int, dict[object, list[asyncpg.Record]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        sets[run["request_id"]][run["agent_id"]].append(run)
    kinds = {r["id"]: (r["kind"], r["outcome"]) for r in requests}
    for request_id, by_agent in sets.items():
        assert request_id in kinds, f"runs for request {request_id}, which does not exist"
        live = {agent: rows for agent, rows in by_agent.items() if not rows[0]["agent_lost"]}
        lost = [row for agent, rows in by_agent.items() if rows[0]["agent_lost"] for row in rows]
        bad_lost = [dict(r) for r in lost if r["status"] not in ("failed", "cancelled")]
        assert not bad_lost, f"request {request_id}: a lost agent's run did not end: {bad_lost}"
        assert len(live) <= 1, f"request {request_id} was executed by {len(live)} agents"
        for rows in live.values():
            firsts: dict[str, int] = defaultdict(int)
            for row in rows:
                firsts[row["step"]] += row["attempt"] == 1
            twice = {step: n for step, n in firsts.items() if n > 1}
            assert not twice, f"request {request_id} ran steps more than once: {twice}"
        kind, outcome = kinds[request_id]
        assert kind == "rerun", f"a {kind} request made runs"
        assert outcome != "rejected", f"rejected request {request_id} made runs"
    for request in requests:
        if request["kind"] == "rerun" and request["outcome"] in ("succeeded", "failed"):
            assert sets.get(request["id"]), f"rerun {request['id']} {request['outcome']} no runs"


async def _materialized(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT format('%I.%I', schemaname, matviewname) AS name FROM pg_matviews"
        " WHERE schemaname = 'public' AND ispopulated ORDER BY 1"
    )
    return [r["name"] for r in rows]


async def _summary_consistent(conn: asyncpg.Connection, summary: str) -> None:
    """The stored rows equal its defining query run now (floats compared to 9 digits: an
    aggregate summed in another order may differ in the last bits)."""
    schema, _, name = summary.partition(".")
    oid = await conn.fetchval("SELECT to_regclass($1)::oid", summary)
    assert oid is not None, f"{summary} does not exist"
    definition = await conn.fetchval("SELECT pg_get_viewdef($1::oid)", oid)
    columns = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute"
        " WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        oid,
    )
    exprs = ", ".join(
        f"round({quote_ident(c['attname'])}::numeric, 9)"
        if c["type"] in FLOAT_TYPES
        else quote_ident(c["attname"])
        for c in columns
    )
    stored = f"SELECT {exprs} FROM {quote_ident(schema)}.{quote_ident(name)}"
    fresh = f"SELECT {exprs} FROM ({definition.rstrip().rstrip(';')}) AS fresh"
    extra = await conn.fetch(f"{stored} EXCEPT ALL {fresh}")
    missing = await conn.fetch(f"{fresh} EXCEPT ALL {stored}")
    assert not extra and not missing, (
        f"{summary} differs from its definition: {len(extra)} stale rows, "
        f"{len(missing)} missing rows"
    )
