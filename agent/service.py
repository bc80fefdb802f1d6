"""The agent: start, serve, stop, reload, run once. Everything else is done by its parts.

`start()` connects and builds one `AgentRuntime` (pools, bookkeeper, runner, redis, metrics,
tracer, clock), verifies the schema and the catalog, registers and publishes. `serve()`
starts the parts, each owning one concern:

- `StepScheduler` (agent/steps.py): step ticks, the upstream gate, chains of runs;
- `CheckScheduler` (agent/checking.py): check ticks, shared probes, the scorecard;
- `RequestQueue` / `RequestHandler` (agent/requests.py): operator requests;
- `Membership` (agent/membership.py): heartbeats, clock, peers, rejoining;
- `Retention` (agent/retention.py): history past its age;

plus one LISTEN connection (pipectl.listen) that wakes them. Everything they share is in the
pipectl schema: any number of agents can run against one database; each tick and request is
handled once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
from opentelemetry.sdk.trace import TracerProvider

from pipectl import migrate
from pipectl.agent import lineage
from pipectl.agent.bookkeeping import Bookkeeper, RunLedger
from pipectl.agent.checking import CheckScheduler
from pipectl.agent.membership import Membership
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.requests import RequestHandler, RequestQueue
from pipectl.agent.retention import Retention
from pipectl.agent.runner import StepPlan, StepRunner
from pipectl.agent.runtime import (
    AgentPlan,
    AgentRuntime,
    Identity,
    Pools,
    build_plan,
    publish_plan,
)
from pipectl.agent.steps import ChainResult, StepScheduler
from pipectl.agent.systemd import notify
from pipectl.agent.tracing import tracer_for
from pipectl.checks.validation import validate_catalog
from pipectl.clock import Clock, DatabaseClock
from pipectl.config import Config, LoadedConfig
from pipectl.db import connect, create_pool
from pipectl.lineage import Lineage
from pipectl.listen import Listener
from pipectl.model import CheckStatus, CheckTrigger, RunStatus, Trigger
from pipectl.resilience import Throttle, close_pool_quietly
from pipectl.store.base import Conn

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

REQUEST_CHANNEL = "pipectl_requests"
CHANGES_CHANNEL = "pipectl_changes"


class Agent:
    """One agent process. `start()`, then `serve()` until `stop()`; or `run_once()`."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        name: str | None = None,
        tracer_provider: TracerProvider | None = None,
        clock: Clock | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.loaded = loaded
        identity = Identity(name="")
        identity.name = name or loaded.config.agent.name or f"{identity.host}:{identity.pid}"
        self.identity = identity
        # Production schedules by the database's clock; tests pass a FakeClock.
        self.clock: Clock = clock or DatabaseClock()
        # The process serves /metrics before the database is reached (agent/main.py): it
        # hands in the registry it serves.
        self.metrics = metrics or AgentMetrics()
        self.tracer_provider = tracer_provider
        self.rt: AgentRuntime | None = None
        self._parts: _Parts | None = None
        self.listener: Listener | None = None
        self.requests: RequestQueue | None = None
        self.lineage: Lineage | None = None
        """The graph as last read from the catalog (start, reload)."""
        self.serving = asyncio.Event()
        """Set once serve() has started every loop."""
        self.stopped = asyncio.Event()
        self._stopping = asyncio.Event()
        self._malformed = Throttle(log, clock=self.clock)

    # ---------------------------------------------------------------- what tests and main use

    @property
    def runtime(self) -> AgentRuntime:
        if self.rt is None:
            raise RuntimeError("the agent has not started")
        return self.rt

    @property
    def parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the agent has not started")
        return self._parts

    @property
    def steps(self) -> StepScheduler:
        return self.parts.steps

    @property
    def checks(self) -> CheckScheduler:
        return self.parts.checks

    @property
    def agent_id(self) -> uuid.UUID:
        return self.identity.id

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def config(self) -> Config:
        return self.rt.config if self.rt is not None else self.loaded.config

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    @property
    def pool(self) -> asyncpg.Pool:
        return self.runtime.pool

    @property
    def listening(self) -> bool:
        return self.listener is not None and self.listener.listening

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Connect, verify schema and catalog, register, publish."""
        loaded = self.loaded
        plan = build_plan(loaded)
        pools = await _open_pools(loaded.config, self.identity.name)
        try:
            async with pools.book.acquire() as conn:
                await migrate.ensure_current(conn)
                plan = await _validated(conn, plan)
        except BaseException:
            await pools.close()
            raise
        config = loaded.config
        book_pool = pools.book
        book = Bookkeeper(book_pool, self.clock)
        ledger = RunLedger(book)
        runner = StepRunner(
            runs_pool=pools.runs,
            book=book,
            ledger=ledger,
            agent_id=self.identity.id,
            agent_name=self.identity.name,
            metrics=self.metrics,
            max_parallel=config.agent.max_parallel_runs,
            tracer=tracer_for(self.tracer_provider),
            clock=self.clock,
        )
        rt = AgentRuntime(
            identity=self.identity,
            clock=self.clock,
            metrics=self.metrics,
            tracer=runner.tracer,
            tracer_provider=self.tracer_provider,
            pools=pools,
            book=book,
            ledger=ledger,
            runner=runner,
            plan=plan,
            redis=_redis(plan),
            stopping=self._stopping,
        )
        self.rt = rt
        steps = StepScheduler(rt)
        membership = Membership(rt, lambda retry: rt.work.dispatch(steps.run_retry(retry)))
        self._parts = _Parts(steps, CheckScheduler(rt), membership)
        await membership.join()
        await self._publish(plan)
        self.lineage = await lineage.reread(rt, config)
        await membership.export_state()  # last successes and statuses from before a restart
        self.metrics.database_reachable(True)
        log.info(
            "agent %s started: %d steps, %d checks",
            self.identity.name,
            len(plan.steps),
            len(plan.enabled_checks()),
            extra={"agent_id": str(self.identity.id)},
        )

    async def _publish(self, plan: AgentPlan) -> None:
        await publish_plan(self.runtime, plan)
        self.metrics.declare(
            {name: _interval(step, self.clock) for name, step in plan.steps.items()},
            {name: plan.check_every(name).total_seconds() for name in plan.enabled_checks()},
        )

    async def serve(self) -> None:
        """Run until stop(): schedules, requests, checks, heartbeats, retention."""
        rt = self.runtime
        parts = self.parts
        handler = RequestHandler(rt, parts.steps, parts.checks)
        queue = self.requests = RequestQueue(rt, handler)
        self.listener = self._listener(rt)
        rt.work.loop("heartbeat", parts.membership.heartbeat_loop)
        rt.work.loop("listener", self.listener.run)
        rt.work.loop("requests", queue.loop)
        rt.work.loop("retention", Retention(rt).loop)
        rt.work.loop("scorecard", parts.checks.scorecard_loop)
        parts.steps.start(rt.plan)
        parts.checks.start(rt.plan)
        notify("READY=1", f"STATUS=serving {len(rt.plan.steps)} steps")
        self.serving.set()
        await self._stopping.wait()

    def _listener(self, rt: AgentRuntime) -> Listener:
        """LISTEN for requests and run changes on a connection of its own, which also holds
        this agent's liveness lock."""
        config = rt.config
        app = f"pipectl-agent {self.identity.name} listen"[:63]

        async def on_connected(_conn: asyncpg.Connection) -> None:
            assert self.listener is not None  # its own callback: it exists
            await self.parts.membership.hold_liveness(self.listener)
            rt.wake_requests.set()  # whatever arrived while we were not listening

        return Listener(
            "agent listener",
            lambda: connect(config, application_name=app),
            {REQUEST_CHANNEL: self._on_request_notify, CHANGES_CHANNEL: self._on_change_notify},
            on_connected=on_connected,
            clock=rt.clock,
            logger=log,
        )

    def _on_request_notify(self, channel: str, payload: str) -> None:
        """The trigger sends the new request's id. Anyone who can connect may NOTIFY any
        channel, so anything else is ignored (the periodic sweep never depends on it)."""
        if payload.isascii() and payload.isdigit():
            self.runtime.wake_requests.set()
        else:
            self._malformed_notify(channel, payload, "expected a request id")

    def _on_change_notify(self, channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("table"), str):
            self._malformed_notify(channel, payload, "expected a JSON object naming a table")
            return
        if data["table"] == "runs":
            self.runtime.runs_changed.fire()

    def _malformed_notify(self, channel: str, payload: str, what: str) -> None:
        """Logged at most once a minute per channel; the payload is never quoted."""
        self._malformed.warning(
            channel,
            "ignored a malformed notification on %s (%d bytes): %s",
            channel,
            len(payload.encode(errors="replace")),
            what,
        )

    async def stop(self) -> None:
        """Stop scheduling, cancel running work (recorded as cancelled), deregister.
        Every wait is bounded: a hung database never keeps the process past its
        shutdown timeout."""
        if self._stopping.is_set():
            await self.stopped.wait()
            return
        self._stopping.set()
        rt = self.rt
        if rt is None:
            self.stopped.set()
            return
        # Real time, whatever clock schedules: systemd kills at TimeoutStopSec.
        loop = asyncio.get_running_loop()
        budget = rt.config.agent.shutdown_timeout.total_seconds()
        deadline = loop.time() + max(2.0, budget - 1.5)

        def left(most: float) -> float:
            return max(0.1, min(most, deadline - loop.time()))

        rt.book.give_up_at = rt.clock.monotonic() + max(1.0, budget / 2)
        if self.listener is not None:
            self.listener.stop()
        pending = rt.work.all_tasks()
        for task in pending:
            task.cancel()
        if pending:
            _, still = await asyncio.wait(pending, timeout=left(budget / 2))
            if still:
                log.warning("%d tasks did not finish before the shutdown deadline", len(still))
        try:
            await asyncio.wait_for(self.parts.membership.leave(), left(6.0))
        except Exception as exc:
            log.warning("could not record the agent's stop: %s", exc)
        await rt.close(within=left(3.0))
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(2000)
        self.stopped.set()
        log.info("agent %s stopped", self.identity.name)

    # ---------------------------------------------------------------- work on demand

    async def run_chain(
        self,
        steps: list[str],
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
    ) -> list[ChainResult]:
        return await self.steps.run_chain(steps, trigger, requested_by, request_id)

    async def run_checks(
        self, names: Sequence[str], trigger: CheckTrigger
    ) -> dict[str, CheckStatus]:
        return await self.checks.run_checks(names, trigger)

    async def run_check(self, name: str, trigger: CheckTrigger) -> CheckStatus:
        return (await self.run_checks([name], trigger))[name]

    async def run_once(self) -> int:
        """Every step (dependency order) and every check once; exit code by the worst."""
        plan = self.runtime.plan
        results = await self.run_chain(plan.dag.order(), Trigger.MANUAL, "agent --once")
        worst = 0
        for step, run_id, status, error in results:
            log.info(
                "once: step %s run %d %s%s", step, run_id, status, f": {error}" if error else ""
            )
            if status in (RunStatus.FAILED, RunStatus.CANCELLED):
                worst = 2
            elif status == RunStatus.SKIPPED:
                worst = max(worst, 1)
        if plan.checks is not None:
            checked = await self.run_checks(plan.enabled_checks(), "manual")
            worst = max([worst, *(status.exit_code for status in checked.values())])
        return worst

    # ---------------------------------------------------------------- reload

    async def reload(self, loaded: LoadedConfig) -> None:
        """Apply a new config; on any problem keep the old one and say why. The new plan
        replaces the old in one assignment: work in flight keeps the plan it started with."""
        rt = self.runtime
        plan = build_plan(loaded)
        async with rt.pool.acquire() as conn:
            plan = await _validated(conn, plan)
        if rt.redis is None:
            rt.redis = _redis(plan)
        rt.plan = plan
        self.loaded = loaded
        await self._publish(plan)
        self.lineage = await lineage.reread(rt, loaded.config)
        self.steps.start(plan)
        self.checks.start(plan)
        log.info(
            "configuration reloaded: %d steps, %d checks",
            len(plan.steps),
            len(plan.enabled_checks()),
        )


@dataclass(frozen=True)
class _Parts:
    """The agent's parts, made once the runtime exists (start)."""

    steps: StepScheduler
    checks: CheckScheduler
    membership: Membership


async def _validated(conn: Conn, plan: AgentPlan) -> AgentPlan:
    """The plan with its check engine, after the one catalog validation `pipectl config
    check` runs too (steps and checks, every problem on its line); no engine without
    enabled checks."""
    engine = await validate_catalog(conn, plan.loaded)
    # The agent's role may; the buffer-cache check needs it. Probes on a replica do not touch
    # the primary's cache (and a replica takes no writes): nothing to record then.
    engine.record_own_reads = plan.config.database.replica_dsn is None
    # Scheduled ticks of windowed checks read only new rows (checks/incremental.py). Not on a
    # replica: its statistics do not count the primary's updates and deletes, which is how
    # the partial aggregates learn that rows changed behind them.
    if plan.config.database.replica_dsn is None:
        engine.enable_incremental()
    return plan.with_checks(engine if plan.enabled_checks() else None)


def _redis(plan: AgentPlan) -> redis.asyncio.Redis | None:
    """The Redis client the cache checks read, when any check is configured with Redis."""
    config = plan.config
    if plan.checks is None or not config.redis.url:
        return None
    import redis.asyncio

    timeout = config.redis.timeout.total_seconds()
    return redis.asyncio.Redis.from_url(
        config.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


async def _open_pools(config: Config, name: str) -> Pools:
    """Three pools, each statement bounded on the client too: a database that stops
    answering (a black-holed network) is noticed, never waited on forever."""
    app = f"pipectl-agent {name}"[:63]
    heartbeat = config.agent.heartbeat.total_seconds()
    probe_limit = max(
        [config.check_defaults.timeout, *(c.timeout for c in config.checks if c.timeout)]
    )
    opened: list[asyncpg.Pool] = []
    try:
        opened.append(
            await create_pool(
                config,
                min_size=0,
                max_size=4,
                application_name=app,
                command_timeout=max(5.0, 2 * heartbeat),
            )
        )
        # Step statements carry their own client-side limits (statement_timeout + grace).
        opened.append(
            await create_pool(
                config, min_size=0, max_size=config.agent.max_parallel_runs, application_name=app
            )
        )
        # Probes get a pool of their own: slow ones must not hold up heartbeats.
        opened.append(
            await create_pool(
                config,
                min_size=0,
                max_size=config.agent.max_parallel_checks,
                application_name=f"{app} checks"[:63],
                command_timeout=(probe_limit + timedelta(seconds=10)).total_seconds(),
            )
        )
        if config.database.replica_dsn:
            opened.append(
                await create_pool(
                    config,
                    min_size=0,
                    max_size=config.agent.max_parallel_checks,
                    application_name=f"{app} replica"[:63],
                    dsn=config.database.replica_dsn,
                    command_timeout=(probe_limit + timedelta(seconds=10)).total_seconds(),
                )
            )
    except BaseException:
        for pool in opened:
            await close_pool_quietly(pool)
        raise
    return Pools(*opened)


def _interval(plan: StepPlan, clock: Clock) -> float | None:
    """Seconds between two consecutive ticks (for cron: the next two)."""
    if plan.schedule is None:
        return None
    first = plan.schedule.next_after(clock.now())
    return (plan.schedule.next_after(first) - first).total_seconds()
