"""What every part of the agent shares, built once by `Agent.start()`.

`AgentRuntime` holds the connections (three pools: bookkeeping, step runs, check probes), the
bookkeeper and run ledger, the step runner, Redis, metrics, tracer and the one clock, plus the
agent's identity, its tasks (`Work`) and the current `AgentPlan`. The parts (step scheduling,
check scheduling, requests, membership, retention) each get the runtime and own one concern;
none reaches into another.

`AgentPlan` is everything derived from the configuration (step plans, the DAG, the check
engine). It is immutable and replaced whole on reload: work in flight keeps the plan it
started with, new work takes the new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from pipectl import store
from pipectl.agent.bookkeeping import Bookkeeper, RunLedger
from pipectl.agent.metrics import AgentMetrics
from pipectl.agent.runner import StepPlan, StepRunner
from pipectl.agent.schedule import Schedule, cron_schedule, interval_schedule
from pipectl.clock import Clock
from pipectl.config import Config, LoadedConfig
from pipectl.dag import Dag
from pipectl.durations import format_duration
from pipectl.resilience import close_pool_quietly
from pipectl.store import StepDefinition

if TYPE_CHECKING:
    import redis.asyncio

    from pipectl.checks.engine import CheckEngine

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class AgentPlan:
    """The configuration as the agent acts on it; replaced whole on reload."""

    loaded: LoadedConfig
    steps: Mapping[str, StepPlan]
    dag: Dag
    checks: CheckEngine | None = None

    @property
    def config(self) -> Config:
        return self.loaded.config

    def enabled_checks(self) -> list[str]:
        return [c.name for c in self.config.checks if c.enabled]

    def check_every(self, name: str) -> timedelta:
        return self.config.check(name).every or self.config.check_defaults.every

    def with_checks(self, engine: CheckEngine | None) -> AgentPlan:
        return AgentPlan(self.loaded, self.steps, self.dag, engine)


def build_plan(loaded: LoadedConfig) -> AgentPlan:
    """Step plans (effective settings: the step's own value, else [defaults]) and the DAG.
    The check engine is added once validated against the catalog (`with_checks`)."""
    config = loaded.config
    d = config.defaults
    plans: dict[str, StepPlan] = {}
    for step in config.steps:
        if not step.enabled:
            continue
        grace = step.misfire_grace or d.misfire_grace
        jitter = step.jitter if step.jitter is not None else d.jitter
        schedule: Schedule | None = None
        if step.every is not None:
            schedule = interval_schedule(step.every, grace, jitter)
        elif step.cron is not None:
            schedule = cron_schedule(
                step.cron, step.timezone or config.agent.timezone, grace, jitter
            )
        plans[step.name] = StepPlan(
            config=step,
            statement_timeout=step.statement_timeout or d.statement_timeout,
            lock_timeout=step.lock_timeout or d.lock_timeout,
            retries=step.retries if step.retries is not None else d.retries,
            retry_backoff=d.retry_backoff,
            retry_backoff_max=d.retry_backoff_max,
            schedule=schedule,
            timezone=config.agent.timezone,
        )
    return AgentPlan(loaded, plans, Dag.from_steps(p.config for p in plans.values()))


def step_definitions(plan: AgentPlan) -> list[StepDefinition]:
    return [
        StepDefinition(
            name=p.name,
            kind=p.config.kind,
            relation=str(p.config.relation) if p.config.relation else None,
            sql=p.statement_text(),
            schedule=p.schedule.text if p.schedule else None,
            depends_on=list(p.config.depends_on),
            description=p.config.description,
            definition={
                **p.config.model_dump(mode="json"),
                "effective": {
                    "statement_timeout": format_duration(p.statement_timeout),
                    "lock_timeout": format_duration(p.lock_timeout),
                    "retries": p.retries,
                },
            },
        )
        for p in plan.steps.values()
    ]


async def publish_plan(rt: AgentRuntime, plan: AgentPlan) -> None:
    """Publish what `plan` defines as this agent's set and retire what no live agent
    publishes any more (a step or check removed from every agent's config)."""
    checks = plan.checks.definitions() if plan.checks is not None else []
    retired = await rt.book(store.publish, rt.identity.id, step_definitions(plan), checks)
    for gone in retired:
        log.info(
            "retired %s %s: no live agent publishes it any more",
            gone.table.rstrip("s"),
            gone.name,
        )


# ---------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """Who this agent is in pipectl.agents. The id changes when peers declared us lost and
    we come back (`renew`); name and host do not."""

    name: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def renew(self) -> uuid.UUID:
        self.id = uuid.uuid4()
        return self.id


# ---------------------------------------------------------------------------- tasks


class Work:
    """The agent's tasks: long-lived loops (restarted after a crash, so that an agent that
    heartbeats never silently stops claiming), and dispatched work (runs, checks, requests)
    that stop() cancels."""

    def __init__(self, clock: Clock, stopping: asyncio.Event) -> None:
        self.clock = clock
        self.stopping = stopping
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.dispatched: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def loop(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.loops[name] = asyncio.create_task(self._guarded(name, body), name=name)

    def cancel_loops(self, prefix: tuple[str, ...]) -> None:
        for name in [n for n in self.loops if n.startswith(prefix)]:
            self.loops.pop(name).cancel()

    def dispatch(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start `coro` as agent-owned work; refused (closed) once stopping."""
        if self.stopping.is_set():
            coro.close()
            return
        task = asyncio.create_task(coro)
        self.dispatched.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)

    def cancel_dispatched(self) -> None:
        for task in list(self.dispatched):
            task.cancel()

    def all_tasks(self) -> list[asyncio.Task[Any]]:
        return [*self.loops.values(), *self.dispatched]

    async def settled(self) -> None:
        """Until no dispatched work is left (tests use this after moving a fake clock)."""
        while self.dispatched:
            await self._idle.wait()
            await asyncio.sleep(0)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.dispatched.discard(task)
        if not self.dispatched:
            self._idle.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent task failed: %r", exc, exc_info=exc)

    async def _guarded(self, name: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            started = self.clock.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.clock.monotonic() - started > 300:  # it had been running fine
                    delay = 1.0
                log.exception("agent loop %s crashed; restarting it in %.0fs", name, delay)
            await self.clock.sleep(delay)
            delay = min(delay * 2, 30.0)


class Pulse:
    """A signal many can wait on with a timeout: `fire()` wakes every current waiter. A
    waiter that read `generation` before looking at the state it waits on passes it to
    `wait()`, so a fire in between is never missed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.generation = 0
        self._event = asyncio.Event()

    def fire(self) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float, seen: int | None = None) -> bool:
        """Until the next fire (or one since generation `seen`), at most `seconds`."""
        if seen is not None and seen != self.generation:
            return True
        return await self.clock.wait(self._event, seconds)


# ---------------------------------------------------------------------------- the runtime


@dataclass
class Pools:
    """Bookkeeping (heartbeats, claims, records), step runs, and check probes apart: a slow
    refresh or probe never holds up a heartbeat."""

    book: asyncpg.Pool
    runs: asyncpg.Pool
    checks: asyncpg.Pool
    replica: asyncpg.Pool | None = None
    """Probes of checks on `[database] replica_dsn`, when set (results go to `checks`)."""

    async def close(self, within: float = 3.0) -> None:
        """Close them all at once, gracefully within `within` seconds, else terminated."""
        pools = [self.runs, self.checks, self.book, *([self.replica] if self.replica else [])]
        await asyncio.gather(*(close_pool_quietly(pool, within) for pool in pools))


@dataclass
class AgentRuntime:
    identity: Identity
    clock: Clock
    metrics: AgentMetrics
    tracer: trace.Tracer
    tracer_provider: TracerProvider | None
    pools: Pools
    book: Bookkeeper
    ledger: RunLedger
    runner: StepRunner
    plan: AgentPlan
    redis: redis.asyncio.Redis | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    work: Work = field(init=False)
    runs_changed: Pulse = field(init=False)
    """Fired when a run of any agent ended (NOTIFY) or one of ours did."""
    wake_requests: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.work = Work(self.clock, self.stopping)
        self.runs_changed = Pulse(self.clock)

    @property
    def config(self) -> Config:
        return self.plan.config

    @property
    def pool(self) -> asyncpg.Pool:
        return self.pools.book

    async def close(self, within: float = 3.0) -> None:
        await self.pools.close(within)
        if self.redis is not None:
            try:
                await asyncio.wait_for(self.redis.aclose(), 2)
            except Exception as exc:
                log.debug("closing redis: %s", exc)
