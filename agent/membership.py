"""Membership: this agent's row in pipectl.agents, its heartbeat, and its peers.

Each heartbeat refreshes `last_seen`, reads the database's clock (the one every agent
schedules by), writes run outcomes the database refused earlier, declares lost the peers
that stopped heartbeating or whose sessions are all gone, and exports the shared state (steps,
checks, agents alive, the request queue: store.shared_state, one statement), so every agent
exports the same picture whichever of them ran what. A heartbeat that fails removes those
series and exports no agent alive. A heartbeat that finds this agent declared lost (it was
cut off) abandons the work in flight and rejoins under a new id; a rejoin cut short by a
failing statement is finished by the next heartbeat.

Liveness never depends on PIDs: an agent holds a shared advisory lock on its listening
connection for as long as it lives (store.hold_liveness), which peers see in pg_locks from
any host, container or PID namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from uuid import UUID

import asyncpg

from pipectl import __version__, store
from pipectl.agent.runtime import AgentRuntime, publish_plan
from pipectl.agent.systemd import notify
from pipectl.clock import DatabaseClock
from pipectl.listen import Listener
from pipectl.model import RunStatus
from pipectl.resilience import Outage, describe, is_transient

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, rt: AgentRuntime, retry: Callable[[store.Retry], None]) -> None:
        self.rt = rt
        self._retry = retry
        self.connected_since: float | None = None
        self.outage = Outage(
            "database",
            log,
            clock=rt.clock,
            down="database unreachable ({error}); retrying",
            up="database reachable again after {seconds:.1f}s",
        )
        self._listener: Listener | None = None
        self._liveness_id = rt.identity.id
        self._rejoining_from: UUID | None = None
        """The id peers declared lost, while coming back under a new one is unfinished."""

    # ------------------------------------------------------------------ joining

    async def join(self) -> None:
        """Register, and declare lost the agents whose process is gone (a predecessor killed
        a moment ago) without waiting for their heartbeats to time out."""
        await self.register()
        self.connected_since = self.rt.clock.monotonic()
        for lost in await store.reap_departed_agents(
            self.rt.pool, self.rt.identity.id, list(self.rt.plan.steps)
        ):
            self._report_lost(lost)

    async def register(self) -> None:
        rt = self.rt
        await store.register_agent(
            rt.pool,
            agent_id=rt.identity.id,
            name=rt.identity.name,
            host=rt.identity.host,
            pid=rt.identity.pid,
            version=__version__,
            heartbeat_seconds=rt.config.agent.heartbeat.total_seconds(),
        )

    async def hold_liveness(self, listener: Listener) -> None:
        """Take the liveness lock on the listener's (new) connection, under the present id."""
        self._listener = listener
        async with listener.exclusive() as conn:
            if conn is None:
                return
            await store.hold_liveness(conn, self.rt.identity.id)
            self._liveness_id = self.rt.identity.id

    async def _move_liveness(self) -> None:
        """After a rejoin the lock must name the new id (the old one was declared lost). The
        listening connection is shared with its keepalive: one statement at a time. Without
        a connection now, the next session takes the lock under the new id."""
        new = self.rt.identity.id
        if self._listener is None or self._liveness_id == new:
            return
        async with self._listener.exclusive() as conn:
            if conn is None or conn.is_closed():
                return
            await store.hold_liveness(conn, new)
            old, self._liveness_id = self._liveness_id, new
            await store.release_liveness(conn, old)

    # ------------------------------------------------------------------ heartbeat

    async def heartbeat_loop(self) -> None:
        interval = self.rt.config.agent.heartbeat.total_seconds()
        clock = self.rt.clock
        while not self.rt.stopping.is_set():
            started = clock.monotonic()
            await self._beat_within(_beat_limit(interval))
            await clock.sleep(max(0.0, interval - (clock.monotonic() - started)))

    async def _beat_within(self, limit: float) -> None:
        """One heartbeat; a database that does not answer within `limit` (real) seconds is
        reported unreachable at once, before the stuck statement has finished unwinding
        (asyncpg cancels it over a new connection, which may hang as well)."""
        beat = asyncio.ensure_future(self.beat())
        done, _ = await asyncio.wait({beat}, timeout=limit)
        if beat not in done:
            beat.cancel()
            self._unreachable(TimeoutError(f"no answer to the heartbeat within {limit:.0f}s"))
            with contextlib.suppress(BaseException):
                await beat  # bounded by the pool's command timeout; beats never pile up
            return
        if (exc := beat.exception()) is not None:
            self._unreachable(exc)
        else:
            self._reachable()

    async def beat(self) -> None:
        rt = self.rt
        status = f"{rt.runner.in_progress} running"
        sent = rt.clock.monotonic()
        beat = await store.heartbeat(rt.pool, rt.identity.id, status)
        if isinstance(rt.clock, DatabaseClock):
            rt.clock.sync(beat.server_now, rt.clock.monotonic() - sent)
        if not beat.alive and self._rejoining_from is None:
            self.abandon()
        if self._rejoining_from is not None:
            await self.rejoin()
        if rt.ledger.pending and await rt.ledger.repair():
            rt.runs_changed.fire()
        # Peers whose sessions are all gone are lost whatever our own recent past; silence
        # alone counts only once we have been connected long enough to judge it.
        if self._healthy_long_enough():
            lost = await store.reap_lost_agents(
                rt.pool, rt.identity.id, rt.config.agent.lost_after, list(rt.plan.steps)
            )
        else:
            lost = await store.reap_departed_agents(rt.pool, rt.identity.id, list(rt.plan.steps))
        for agent in lost:
            self._report_lost(agent)
        if lost:  # a lost agent no longer publishes: what only it defined is retired
            await self._retire_unpublished()
        await self.export_state()

    async def export_state(self) -> None:
        """Export the shared state as the database has it now."""
        self.rt.metrics.shared(await store.shared_state(self.rt.pool))

    async def _retire_unpublished(self) -> None:
        """Retire what only lost peers published. A refusal is logged, never taken for the
        heartbeat failing: the next publish (start, reload) retires it as well."""
        try:
            retired = await store.retire_unpublished(self.rt.pool)
        except asyncpg.PostgresError as exc:
            log.warning("could not retire what lost agents published: %s", describe(exc))
            return
        for gone in retired:
            log.info(
                "retired %s %s: no live agent publishes it any more",
                gone.table.rstrip("s"),
                gone.name,
            )

    def _reachable(self) -> None:
        if self.connected_since is None:
            self.connected_since = self.rt.clock.monotonic()
        self.outage.recovered()
        self.rt.metrics.database_reachable(True)

    def _unreachable(self, exc: BaseException) -> None:
        if not is_transient(exc) and not isinstance(exc, asyncpg.PostgresError):
            log.error("heartbeat failed unexpectedly: %s", describe(exc), exc_info=exc)
        self.outage.failed(exc)
        self.connected_since = None
        self.rt.metrics.database_reachable(False)
        self.rt.metrics.shared(None)  # removed, not left stale: nothing here is known now
        notify("STATUS=database unreachable, retrying")

    def _healthy_long_enough(self) -> bool:
        """After an outage every agent's heartbeat is stale; give peers the same grace to
        reconnect before declaring any of them lost."""
        if self.connected_since is None:
            return False
        agent = self.rt.config.agent
        grace = agent.heartbeat.total_seconds() * agent.lost_after
        return self.rt.clock.monotonic() - self.connected_since >= grace

    def abandon(self) -> None:
        """Peers declared us lost (we were cut off): our runs and requests were handed over,
        so abandon what we were doing and take a new id; `rejoin` comes back under it."""
        log.warning("this agent was declared lost by a peer; abandoning in-flight work")
        rt = self.rt
        rt.runner.cancel_reason = "abandoned: agent was declared lost by a peer"
        rt.work.cancel_dispatched()
        self._rejoining_from = rt.identity.id
        rt.runner.agent_id = rt.identity.renew()

    async def rejoin(self) -> None:
        """Come back as a new agent. Every part may be done again, so a heartbeat that fails
        half-way (a lost connection) leaves the rest to the next one, never an agent
        registered under its new id that publishes nothing."""
        rt = self.rt
        old_id = self._rejoining_from
        assert old_id is not None
        # The reaper failed what it saw; a run this agent created under its old identity
        # in the moment before (a tick, a chained run) would otherwise stay queued for good.
        closed = await store.close_unfinished_runs(
            rt.pool, old_id, RunStatus.CANCELLED, rt.runner.cancel_reason
        )
        if closed:
            log.info("closed %d runs left under the identity peers declared lost", len(closed))
        await self.register()
        await self._move_liveness()
        await publish_plan(rt, rt.plan)  # a new agent row publishes nothing until it does
        self._rejoining_from = None

    def _report_lost(self, lost: store.LostAgent) -> None:
        log.warning(
            "agent %s lost (%s): %d runs failed, %d requests released%s",
            lost.name,
            lost.why,
            lost.failed_runs,
            lost.released_requests,
            f", retrying {', '.join(r.step for r in lost.retries)}" if lost.retries else "",
        )
        self.rt.wake_requests.set()
        for retry in lost.retries:
            self._retry(retry)

    # ------------------------------------------------------------------ leaving

    async def leave(self) -> None:
        """Close what this agent left unfinished and record its stop (bounded waits: the
        database may be gone)."""
        rt = self.rt
        agent_id = rt.identity.id
        closed = await asyncio.wait_for(
            store.close_unfinished_runs(
                rt.pool, agent_id, RunStatus.CANCELLED, "cancelled: agent shutting down"
            ),
            2,
        )
        if closed:
            log.info("closed %d unfinished runs as cancelled", len(closed))
        # Requests whose tasks were cancelled before they could settle them: a stopped agent
        # is never reaped, so nobody else would.
        released, cancelled = await asyncio.wait_for(store.release_claims(rt.pool, agent_id), 2)
        if released or cancelled:
            log.info(
                "requests left at shutdown: %d handed back to the queue, %d cancelled",
                released,
                cancelled,
            )
        await asyncio.wait_for(store.stop_agent(rt.pool, agent_id), 2)


def _beat_limit(interval: float) -> float:
    """A heartbeat that takes longer than this is a hung database, reported as such."""
    return max(2.0, interval * 2)
