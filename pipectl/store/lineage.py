"""The facts lineage is derived from: the catalog's relations and what each view reads, and
the steps and checks the agents published."""

from __future__ import annotations

import json

from pipectl.lineage import (
    RELKINDS,
    CatalogRelation,
    CheckFacts,
    Lineage,
    StepFacts,
    watched_by_check,
)
from pipectl.store.base import DB

# Every relation of a user schema, and for a view or materialized view the relations its
# rewrite rule depends on (a view's own columns excluded). pg_depend records only direct
# dependencies: nested views are followed by the graph, one level per relation.
_RELATIONS = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS relkind,
       coalesce(reads.names, '{}') AS reads
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT array_agg(DISTINCT rn.nspname || '.' || rc.relname
                     ORDER BY rn.nspname || '.' || rc.relname) AS names
    FROM pg_rewrite rw
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                    AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class rc ON rc.oid = d.refobjid
    JOIN pg_namespace rn ON rn.oid = rc.relnamespace
    WHERE rw.ev_class = c.oid AND d.refobjid <> c.oid
      AND rc.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND rn.nspname <> ALL ($1::text[]) AND rn.nspname NOT LIKE 'pg\\_%'
) reads ON c.relkind IN ('v', 'm')
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname <> ALL ($1::text[]) AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT c.relispartition
ORDER BY 1, 2
"""

# pipectl's own schema and the system's are not part of the pipeline.
_SKIPPED_SCHEMAS = ["pipectl", "information_schema"]


async def catalog_relations(db: DB) -> list[CatalogRelation]:
    """Relations of the user schemas with their kind and, for views and materialized
    views, the relations they read directly."""
    rows = await db.fetch(_RELATIONS, _SKIPPED_SCHEMAS)

    return [
        CatalogRelation(
            relation=f"{r['schema']}.{r['name']}",
            kind=RELKINDS[r["relkind"]],
            reads=tuple(r["reads"]),
        )
        for r in rows
    ]


async def published_facts(db: DB) -> tuple[list[StepFacts], list[CheckFacts]]:
    """The enabled steps and checks as published, as lineage facts."""
    steps = [
        StepFacts(
            r["name"],
            r["kind"],
            r["relation"],
            tuple(r["depends_on"] or ()),
            (r["source"],) if r["source"] else (),
        )
        for r in await db.fetch(
            "SELECT name, kind, relation, depends_on,"
            " definition -> 'incremental' ->> 'source' AS source"
            " FROM pipectl.steps WHERE enabled ORDER BY name"
        )
    ]
    checks = []
    for r in await db.fetch(
        "SELECT name, kind, definition FROM pipectl.checks WHERE enabled ORDER BY name"
    ):
        definition = r["definition"]
        if isinstance(definition, str):  # a connection without pipectl's jsonb codec
            definition = json.loads(definition)
        relations, watched_steps = watched_by_check(definition or {})
        checks.append(CheckFacts(r["name"], r["kind"], relations, watched_steps))
    return steps, checks


async def published_lineage(db: DB) -> Lineage:
    """The graph as the CLI and the console see it: the catalog, and the steps and checks
    the agents published."""
    steps, checks = await published_facts(db)
    return Lineage.build(await catalog_relations(db), steps, checks)


LINEAGE_EVENT = "lineage.changed"


async def recorded_lineage(db: DB) -> dict[str, list[str]] | None:
    """The summaries' reads as last recorded by an agent (`summary_reads`), None before any."""
    detail = await db.fetchval(
        "SELECT detail FROM pipectl.events WHERE kind = $1 ORDER BY at DESC, id DESC LIMIT 1",
        LINEAGE_EVENT,
    )
    if isinstance(detail, str):
        detail = json.loads(detail)
    reads = detail.get("reads") if isinstance(detail, dict) else None
    return reads if isinstance(reads, dict) else None
