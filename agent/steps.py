"""Step scheduling: each step's ticks, the upstream gate, and chains of runs.

A tick is claimed by inserting its run row (unique per step and nominal time), so each tick
runs once across all agents. Before running, a tick waits for its upstreams' runs in flight
and refuses to run unless each upstream's latest decisive run succeeded (a held upstream, whose
gates kept its old content, stops it too). Requests run chains
of steps (`run_chain`) in the DAG's order; a failure skips what depends on it.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta

from pipectl import store
from pipectl.agent.bookkeeping import RunEnd
from pipectl.agent.runner import GateMode, RunOutcome, StepPlan
from pipectl.agent.runtime import AgentPlan, AgentRuntime
from pipectl.agent.schedule import InFlight, tick_loop
from pipectl.durations import format_duration
from pipectl.model import RunStatus, Trigger
from pipectl.resilience import Outage, Throttle, describe

log = logging.getLogger(__name__)

# How far ahead of the database's clock a tick may be claimed (see store.claim_tick).
CLOCK_TOLERANCE = timedelta(seconds=5)
# How long a tick waits for an upstream tick due at the same instant to be claimed.
UPSTREAM_TICK_WAIT = 30.0

ChainResult = tuple[str, int, RunStatus, str | None]


class StepScheduler:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.claims = Outage("claiming step ticks", log, clock=rt.clock)
        self._throttle = Throttle(log, clock=rt.clock)
        self._in_flight = InFlight(
            "step",
            "its run waits for upstream runs, a connection of agent.max_parallel_runs or a"
            " retry, or runs longer than its schedule's interval",
            log,
            rt.clock,
            lambda name: self.rt.metrics.step_tick_skipped(name),
        )

    # ------------------------------------------------------------------ schedules

    def start(self, plan: AgentPlan) -> None:
        """One tick loop per scheduled step (replacing any from an earlier plan)."""
        rt = self.rt
        rt.work.cancel_loops(("step:",))
        for step in plan.steps.values():
            if step.schedule is None:
                continue
            rt.work.loop(
                f"step:{step.name}",
                functools.partial(
                    tick_loop,
                    step.schedule,
                    functools.partial(self._tick, step.name),
                    clock=rt.clock,
                    on_next=functools.partial(self._next_run, step.name),
                    what=f"step {step.name}",
                ),
            )

    def _tick(self, step: str, nominal: datetime, lateness: float) -> None:
        """Dispatch the tick, unless the step's previous tick has not finished yet: then this
        one is coalesced into it, as a check's are. A tick's run can wait long after its
        claim (for upstream runs in flight, for a connection of the runs' pool when
        `max_parallel_runs` are busy, between retries); queueing a run per tick meanwhile
        claimed a run row each and, once the wait ended, refreshed the step again and again,
        moments apart. The run in flight refreshes from the data as it is when it starts, so
        the skipped ticks lose nothing."""
        if self._in_flight.admit(step, nominal):
            self.rt.work.dispatch(self._tick_in_flight(step, nominal, lateness))

    async def _tick_in_flight(self, step: str, nominal: datetime, lateness: float) -> None:
        """The tick's own run is in flight; the unscheduled steps after it are not (the next
        tick of this step need not wait for them)."""
        try:
            outcome = await self._scheduled_run(step, nominal, lateness)
        finally:
            self._in_flight.done(step)
        if outcome is not None:
            await self._after_success(step, outcome)

    def _next_run(self, step: str, at: datetime) -> None:
        """Shown to operators ("next run"): best effort, never fails the agent."""
        self.rt.work.dispatch(self._quiet_next_run(step, at))

    async def _quiet_next_run(self, step: str, at: datetime) -> None:
        try:
            await store.set_next_run(self.rt.pool, step, at)
        except Exception as exc:
            log.debug("could not record the next run of %s: %s", step, exc)

    async def on_tick(self, step: str, nominal: datetime, lateness: float) -> None:
        """One tick: claimed, run, then the unscheduled steps that wait on the step."""
        outcome = await self._scheduled_run(step, nominal, lateness)
        if outcome is not None:
            await self._after_success(step, outcome)

    async def _scheduled_run(
        self, step: str, nominal: datetime, lateness: float
    ) -> RunOutcome | None:
        """Claim the tick and run it; None when it was not this agent's to run, or skipped."""
        rt = self.rt
        plan = rt.plan.steps.get(step)
        if plan is None or plan.schedule is None:
            return None
        # Not retried: a tick that cannot be claimed now (the database is away) is missed,
        # and the next one comes; retrying would pile up late ticks behind an outage.
        try:
            claim = await store.claim_tick(rt.pool, step, nominal, rt.identity.id, CLOCK_TOLERANCE)
        except Exception as exc:
            self.claims.failed(exc)
            return None
        self.claims.recovered()
        if claim.ahead is not None:
            self._throttle.warning(
                "clock-ahead",
                "step %s: tick %s not taken: it is %.0fs ahead of the database's clock",
                step,
                nominal.isoformat(timespec="seconds"),
                claim.ahead.total_seconds(),
            )
            return None
        if claim.run_id is None:
            return None  # another agent took this tick
        run_id = claim.run_id
        grace = plan.schedule.misfire_grace.total_seconds()
        if lateness > grace:
            await self.skip(
                run_id,
                f"missed its tick by {lateness:.0f}s (misfire_grace "
                f"{format_duration(plan.schedule.misfire_grace)})",
            )
            return None
        await rt.clock.sleep(plan.schedule.jitter_delay())
        if reason := await self._blocked(step) or await self._upstream_gate(step, nominal):
            await self.skip(run_id, reason)
            return None
        return await self.run(plan, run_id, Trigger.SCHEDULE)

    # ------------------------------------------------------------------ runs

    async def run(
        self,
        plan: StepPlan,
        run_id: int,
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
        *,
        enforce_gates: bool = True,
    ) -> RunOutcome:
        """One run of `plan` with its gates (measured, not enforced, when publishing anyway)."""
        rt = self.rt
        mode = GateMode(rt.plan.checks, enforce_gates)
        outcome = await rt.runner.run(
            plan, run_id, trigger, requested_by, request_id, gate_mode=mode
        )
        rt.runs_changed.fire()
        return outcome

    async def publish(
        self, step: str, held_run: int, requested_by: str, request_id: int
    ) -> RunOutcome:
        """Publish a held step anyway: one more run of it whose gates are measured and
        recorded but not enforced (a refresh recomputes its content: PostgreSQL cannot keep
        the rolled-back one), then the unscheduled steps that wait on it."""
        rt = self.rt
        run_id = await rt.book(
            store.create_run,
            step,
            Trigger.MANUAL,
            rt.identity.id,
            requested_by=requested_by,
            request_id=request_id,
            parent_run_id=held_run,
        )
        outcome = await self.run(
            rt.plan.steps[step],
            run_id,
            Trigger.MANUAL,
            requested_by,
            request_id,
            enforce_gates=False,
        )
        await self._after_success(step, outcome)
        return outcome

    async def run_retry(self, retry: store.Retry) -> None:
        """Run a run queued again after its agent was lost (see store.reap_lost_agents)."""
        rt = self.rt
        plan = rt.plan.steps.get(retry.step)
        if plan is None:
            await self.skip(retry.run_id, f"step {retry.step} is not in this agent's config")
            return
        if retry.attempt > plan.retries + 1:
            await rt.ledger.finish(
                retry.run_id,
                RunEnd(RunStatus.FAILED, error=f"lost with its agent; {plan.retries} retries used"),
            )
            return
        log.info(
            "step %s: run %d taken over (attempt %d)",
            retry.step,
            retry.run_id,
            retry.attempt,
            extra={"step": retry.step, "run_id": retry.run_id},
        )
        if reason := await self._blocked(retry.step) or await self._upstream_gate(retry.step, None):
            await self.skip(retry.run_id, reason)
            return
        outcome = await rt.runner.run(
            plan,
            retry.run_id,
            Trigger.RETRY,
            attempt=retry.attempt,
            gate_mode=GateMode(rt.plan.checks),
        )
        rt.runs_changed.fire()
        await self._after_success(retry.step, outcome)

    async def skip(self, run_id: int, reason: str) -> None:
        await self.rt.ledger.finish(run_id, RunEnd(RunStatus.SKIPPED, error=reason))
        log.info("run %d skipped: %s", run_id, reason, extra={"run_id": run_id})

    async def run_chain(
        self,
        steps: list[str],
        trigger: Trigger,
        requested_by: str | None = None,
        request_id: int | None = None,
    ) -> list[ChainResult]:
        """Run steps in the given (topological) order; a failure skips what depends on it."""
        rt = self.rt
        plan = rt.plan
        failed: dict[str, tuple[int, RunStatus]] = {}
        results: list[ChainResult] = []
        for step in steps:
            run_id = await rt.book(
                store.create_run,
                step,
                trigger,
                rt.identity.id,
                requested_by=requested_by,
                request_id=request_id,
            )
            broken = [u for u in plan.dag.ancestors(step) if u in failed]
            if broken:
                broken_run, broken_status = failed[broken[0]]
                # Not "skipped": what stopped the chain is what the operator has to look at.
                shown = RunStatus.FAILED if broken_status == RunStatus.SKIPPED else broken_status
                reason = f"upstream {broken[0]} {shown} (run {broken_run})"
                await self.skip(run_id, reason)
                failed[step] = (run_id, RunStatus.SKIPPED)
                results.append((step, run_id, RunStatus.SKIPPED, reason))
                continue
            outcome = await self.run(plan.steps[step], run_id, trigger, requested_by, request_id)
            if outcome.status != RunStatus.SUCCEEDED:
                failed[step] = (outcome.run_id, outcome.status)
            results.append((step, outcome.run_id, outcome.status, outcome.error))
        return results

    async def _blocked(self, step: str) -> str | None:
        """A paused step does not run on schedule."""
        rt = self.rt
        states = await rt.book(store.step_states, [step])
        paused = bool(states and states[0].paused)
        if not paused:
            return None
        state = states[0]
        why = f": {state.paused_reason}" if state.paused_reason else ""
        return f"paused by {state.paused_by}{why}"

    async def _upstream_gate(self, step: str, nominal: datetime | None) -> str | None:
        """Wait for upstream runs in flight (and for an upstream tick due at the same time),
        then refuse to run unless every upstream's latest decisive run succeeded."""
        rt = self.rt
        plan = rt.plan
        upstreams = plan.dag.upstream(step)
        for upstream in upstreams:
            if reason := await self._wait_for(upstream, plan.steps.get(upstream), nominal):
                return reason
        latest = await rt.book(store.latest_outcomes, upstreams) if upstreams else {}
        for upstream in upstreams:
            run = latest.get(upstream)
            if run is None:
                return f"upstream {upstream} has not succeeded yet"
            if run.status != RunStatus.SUCCEEDED:
                # A hold's error starts "held: ", which the status already says.
                why = (run.error or "").removeprefix("held: ")
                error = f": {why}" if why else ""
                return f"upstream {upstream} {run.status} (run {run.id}){error}"
        return None

    async def _wait_for(
        self, upstream: str, plan: StepPlan | None, nominal: datetime | None
    ) -> str | None:
        """Until `upstream` has no run in flight (runs of ours whose end the database has
        not taken yet count as ended) and its tick at `nominal`, if it has one, exists."""
        rt = self.rt
        clock = rt.clock
        limit = plan.statement_timeout.total_seconds() * (plan.retries + 1) if plan else 60
        deadline = clock.monotonic() + limit
        tick = nominal
        if (
            plan is None
            or plan.schedule is None
            or tick is None
            or plan.schedule.next_after(tick - timedelta(microseconds=1)) != tick
        ):
            tick = None  # the upstream has no tick of its own at this instant
        tick_deadline = clock.monotonic() + UPSTREAM_TICK_WAIT
        while True:
            seen = rt.runs_changed.generation
            # Tick first: once its row exists, has_unfinished sees it until it ends.
            waiting_tick = tick is not None and not await rt.book(store.tick_exists, upstream, tick)
            busy = await rt.book(store.has_unfinished, upstream, list(rt.ledger.pending))
            if waiting_tick and clock.monotonic() > tick_deadline:
                waiting_tick = False
            if not busy and not waiting_tick:
                return None
            if clock.monotonic() > deadline:
                return f"upstream {upstream} still running after {limit:.0f}s"
            await rt.runs_changed.wait(1.0, seen)

    async def _after_success(self, step: str, outcome: RunOutcome) -> None:
        """Unscheduled steps that depend on this one run now (trigger 'upstream')."""
        if outcome.status != RunStatus.SUCCEEDED:
            return
        rt = self.rt
        plan = rt.plan
        for child in plan.dag.downstream(step):
            child_plan = plan.steps.get(child)
            if child_plan is None or child_plan.schedule is not None:
                continue
            try:
                run_id = await rt.book(
                    store.create_run,
                    child,
                    Trigger.UPSTREAM,
                    rt.identity.id,
                    parent_run_id=outcome.run_id,
                )
            except Exception as exc:
                log.warning("could not start %s after %s: %s", child, step, describe(exc))
                continue
            if reason := await self._blocked(child) or await self._upstream_gate(child, None):
                await self.skip(run_id, reason)
                continue
            await self._after_success(child, await self.run(child_plan, run_id, Trigger.UPSTREAM))
