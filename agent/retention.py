"""Retention: deletes rows of pipectl's history past their configured age, once an hour."""

from __future__ import annotations

import logging

from pipectl import store
from pipectl.agent.runtime import AgentRuntime
from pipectl.resilience import Outage

log = logging.getLogger(__name__)

PASS_EVERY = 3600.0


class Retention:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.outage = Outage("retention pass", log, every=PASS_EVERY, clock=rt.clock)

    def ages(self) -> dict[str, object]:
        r = self.rt.config.retention
        return {
            "runs": r.runs,
            "results": r.results,
            "samples": r.samples,
            "events": r.events,
            "requests": r.requests,
            "agents": r.runs,
        }

    async def loop(self) -> None:
        rt = self.rt
        while not rt.stopping.is_set():
            await self.prune_once()
            await rt.clock.sleep(PASS_EVERY)

    async def prune_once(self) -> dict[str, int]:
        try:
            deleted = await store.prune(self.rt.pool, self.ages())  # type: ignore[arg-type]
            # pipectl's own reads matter only until the buffer-cache check has judged them.
            deleted["own_reads"] = await store.prune_own_reads(
                self.rt.pool, self.rt.config.retention.results
            )
        except Exception as exc:
            self.outage.failed(exc)
            return {}
        self.outage.recovered()
        if any(deleted.values()):
            log.info("retention: deleted %s", deleted)
        return deleted
