"""The agent's lineage: re-read from the catalog on start and on every reload. What the views
and materialized views read is compared with what an agent last recorded: a difference is a
schema change, recorded as a `lineage.changed` event (the first reading is recorded too)."""

from __future__ import annotations

import logging

import asyncpg

from pipectl import store
from pipectl.agent.runtime import AgentRuntime
from pipectl.config import Config
from pipectl.lineage import (
    CheckFacts,
    Lineage,
    StepFacts,
    describe_change,
    summary_reads,
)
from pipectl.resilience import describe
from pipectl.store.lineage import LINEAGE_EVENT, catalog_relations, recorded_lineage

log = logging.getLogger(__name__)

_SHOWN_CHANGES = 5


def facts(config: Config) -> tuple[list[StepFacts], list[CheckFacts]]:
    """The enabled steps and checks of a config as lineage facts (what the agent publishes)."""
    steps = [
        StepFacts(
            s.name,
            s.kind,
            str(s.relation) if s.relation else None,
            tuple(s.depends_on),
            (str(s.incremental.source),) if s.incremental else (),
        )
        for s in config.steps
        if s.enabled
    ]
    checks = []
    for check in config.checks:
        if check.enabled:
            relations, watched = check.watches()
            checks.append(CheckFacts(check.name, check.kind, relations, watched))
    return steps, checks


async def reread(rt: AgentRuntime, config: Config) -> Lineage | None:
    """The graph from the catalog and `config`; records a change since the last recording.
    None when the catalog could not be read (logged; the agent carries on without)."""
    try:
        async with rt.pool.acquire() as conn:
            relations = await catalog_relations(conn)
            before = await recorded_lineage(conn)
    except (asyncpg.PostgresError, OSError) as exc:
        log.warning("could not read the lineage from the catalog: %s", describe(exc))
        return None
    steps, checks = facts(config)
    lineage = Lineage.build(relations, steps, checks)
    after = summary_reads(relations)
    if before == after:
        return lineage
    changes = describe_change(before or {}, after)
    if before is None:
        message = f"lineage recorded: {len(after)} views and materialized views"
    else:
        shown = changes[:_SHOWN_CHANGES]
        more = len(changes) - len(shown)
        message = "schema change: " + "; ".join(shown) + (f"; and {more} more" if more else "")
    await rt.book(
        store.add_event,
        LINEAGE_EVENT,
        "lineage",
        message,
        {"reads": after, "changes": changes},
    )
    log.info("%s", message)
    return lineage
