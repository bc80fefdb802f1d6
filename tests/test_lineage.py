"""Lineage from the catalog (issue 15 §1) and root cause / impact (§2): the graph derived from
pg_rewrite/pg_depend through views over views and materialized views down to base tables,
steps and checks on it; one incident for one stalled feed; `pipectl lineage` and
`pipectl why` (text and --json)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl import store
from pipectl.cli import main
from pipectl.incidents import Assessment, assess
from pipectl.lineage import (
    CatalogRelation,
    CheckFacts,
    Lineage,
    Node,
    StepFacts,
    UnknownName,
    watched_by_check,
)
from pipectl.model import CheckStatus
from pipectl.store.lineage import catalog_relations, published_lineage

NOW = datetime.now(UTC).replace(hour=3, minute=45, second=0, microsecond=0)
"""Today at 03:45 (times on the same day print as HH:MM)."""

# A view over a view over a base table, a materialized view over that, a view over two
# materialized views, and one in another schema that reads a matview and a table.
CHAINS = """
CREATE VIEW public.feedback_recent AS
    SELECT id, user_rating, created_at FROM public.user_feedback
    WHERE created_at > now() - interval '1 day';
CREATE VIEW public.feedback_rated AS
    SELECT id, user_rating FROM public.feedback_recent WHERE user_rating IS NOT NULL;
CREATE MATERIALIZED VIEW public.rating_daily AS
    SELECT user_rating, count(*) AS n FROM public.feedback_rated GROUP BY user_rating;
CREATE VIEW public.rating_report AS
    SELECT r.user_rating, r.n, s.total_feedback
    FROM public.rating_daily r CROSS JOIN public.user_satisfaction_summary s;
CREATE SCHEMA analytics;
CREATE VIEW analytics.rule_board AS
    SELECT e.rule_id, e.usage_count, m.enabled
    FROM public.rule_effectiveness_summary e JOIN public.rule_metadata m USING (rule_id);
"""

STEPS = [
    ("rule_effectiveness_summary", "matview", "public.rule_effectiveness_summary", []),
    (
        "user_satisfaction_summary",
        "matview",
        "public.user_satisfaction_summary",
        ["rule_effectiveness_summary"],
    ),
    ("rating_daily", "matview", "public.rating_daily", []),
]


def _freshness(table: str, step: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "freshness", "table": table, "column": "created_at"}
    if step:
        out["step"] = step
    return out


# name, kind, definition, status, since (minutes before NOW), value
CHECKS: list[tuple[str, str, dict[str, Any], str, float, float | None]] = [
    ("user_feedback_freshness", "freshness", _freshness("public.user_feedback"), "fail", 18,
     33 * 60.0),
    ("user_feedback_volume", "volume", {"kind": "volume", "table": "public.user_feedback"},
     "warn", 5, 0.0),
    ("user_satisfaction_summary_freshness", "freshness",
     _freshness("public.user_feedback", "user_satisfaction_summary"), "fail", 3, 33 * 60.0),
    ("rule_performance_freshness", "freshness", _freshness("public.rule_performance"), "ok", 90,
     60.0),
    ("rule_ids_known", "quality",
     {"kind": "quality", "table": "public.rule_performance",
      "rule": {"type": "references", "ref_table": "public.rule_metadata"}}, "ok", 90, 0.0),
    ("rating_report_rows", "volume", {"kind": "volume", "table": "public.rating_report"}, "ok",
     90, 10.0),
    ("redis_hit_ratio", "cache", {"kind": "cache", "source": "redis"}, "warn", 40, 0.7),
]  # fmt: skip


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    await conn.execute(CHAINS)
    try:
        yield conn
    finally:
        await conn.close()


async def publish(conn: asyncpg.Connection, silenced: Collection[str] = ()) -> None:
    """Steps, runs and check states as agents would have left them: user_feedback stopped
    at 03:12; its freshness fails since 03:27; the summary refreshed fine at 03:30."""
    for name, kind, relation, deps in STEPS:
        await conn.execute(
            "INSERT INTO pipectl.steps (name, kind, relation, depends_on) VALUES ($1,$2,$3,$4)",
            name,
            kind,
            relation,
            deps,
        )
    for name, *_ in STEPS:
        done = NOW - timedelta(minutes=15)
        await conn.execute(
            "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at,"
            " finished_at) VALUES ($1, 'schedule', 'succeeded', $2, $2, $2)",
            name,
            done,
        )
    for name, kind, definition, status, minutes, value in CHECKS:
        await conn.execute(
            "INSERT INTO pipectl.checks (name, kind, target, status, status_since, last_value,"
            " last_result_at, definition, silenced_until, silenced_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            name,
            kind,
            definition.get("table"),
            status,
            NOW - timedelta(minutes=minutes),
            value,
            NOW,
            json.dumps(definition),
            NOW + timedelta(hours=1) if name in silenced else None,
            "alice" if name in silenced else None,
        )


async def add_run(
    conn: asyncpg.Connection,
    status: str,
    minutes_ago: int,
    *,
    trigger: str = "schedule",
    attempt: int = 1,
    error: str | None = None,
) -> None:
    """A run of rule_effectiveness_summary queued `minutes_ago`; one that ended, ended then."""
    at = NOW - timedelta(minutes=minutes_ago)
    ended = at if status not in ("queued", "running") else None
    await conn.execute(
        "INSERT INTO pipectl.runs (step, trigger, status, queued_at, started_at, finished_at,"
        " error, attempt) VALUES ('rule_effectiveness_summary', $1, $2, $3, $4, $4, $5, $6)",
        trigger,
        status,
        at,
        ended,
        error,
        attempt,
    )


async def assessed(conn: asyncpg.Connection) -> Assessment:
    """Root cause and impact over the published lineage and the status snapshot, at NOW."""
    lineage = await published_lineage(conn)
    snapshot = await store.status_snapshot(conn)
    return assess(lineage, snapshot.steps, snapshot.checks, NOW)


# ---------------------------------------------------------------------- the graph


async def test_the_graph_follows_views_over_views_and_matviews_down_to_base_tables(
    db: asyncpg.Connection,
) -> None:
    relations = {r.relation: r for r in await catalog_relations(db)}
    assert relations["public.feedback_rated"].kind == "view"
    assert relations["public.rating_daily"].kind == "matview"
    assert relations["public.rating_daily"].reads == ("public.feedback_rated",)
    assert relations["public.rating_report"].reads == (
        "public.rating_daily",
        "public.user_satisfaction_summary",
    )
    assert relations["analytics.rule_board"].reads == (
        "public.rule_effectiveness_summary",
        "public.rule_metadata",
    )
    assert not any(name.startswith("pipectl.") for name in relations), "our schema is not data"

    lineage = Lineage.build(relations.values())
    report = Node("relation", "public.rating_report")
    up = lineage.ancestors(report)
    assert up == [
        Node("relation", "public.rating_daily"),
        Node("relation", "public.user_satisfaction_summary"),
        Node("relation", "public.feedback_rated"),
        Node("relation", "public.user_feedback"),
        Node("relation", "public.feedback_recent"),
    ], "nearest first; user_feedback is read by the summary and (via two views) the matview"
    assert Node("relation", "public.rating_report") in lineage.descendants(
        Node("relation", "public.user_feedback")
    )
    assert lineage.kind(Node("relation", "public.user_feedback")) == "table"
    experiments = Node("relation", "public.ab_experiments")
    assert lineage.resolve("ab_experiments") == experiments, "nothing reads it: still known"
    assert not lineage.upstream(experiments) and not lineage.downstream(experiments)
    assert not any(line.startswith("ab_experiments") for line in lineage.tree()), "not shown"


async def test_steps_and_checks_join_the_catalog_graph(db: asyncpg.Connection) -> None:
    await publish(db)
    lineage = await published_lineage(db)
    summary = Node("relation", "public.user_satisfaction_summary")
    assert lineage.upstream(summary) == (
        Node("relation", "public.user_feedback"),
        Node("step", "user_satisfaction_summary"),
    )
    assert lineage.upstream(Node("step", "user_satisfaction_summary")) == (
        Node("step", "rule_effectiveness_summary"),
    )
    fresh = Node("check", "user_satisfaction_summary_freshness")
    assert lineage.upstream(fresh) == (
        Node("relation", "public.user_feedback"),
        Node("step", "user_satisfaction_summary"),
    )
    assert Node("check", "rule_ids_known") in lineage.downstream(
        Node("relation", "public.rule_metadata")
    ), "a references rule watches its reference table too"
    assert lineage.upstream(Node("check", "redis_hit_ratio")) == ()
    assert lineage.refreshed_by[Node("relation", "public.rating_daily")] == "rating_daily"


def test_names_resolve_relations_first_and_unknown_names_suggest() -> None:
    lineage = Lineage.build(
        [
            CatalogRelation("public.t", "table"),
            CatalogRelation("public.s", "matview", ("public.t",)),
            CatalogRelation("other.t", "table"),
            CatalogRelation("other.v", "view", ("other.t",)),
            CatalogRelation("third.v", "view", ("other.t",)),
        ],
        [StepFacts("s", "matview", "public.s")],
        [CheckFacts("t_fresh", "freshness", ("public.t",))],
    )
    assert lineage.resolve("s") == Node("relation", "public.s")
    assert lineage.resolve("step:s") == Node("step", "s")
    assert lineage.resolve("public.t") == Node("relation", "public.t")
    assert lineage.resolve("t_fresh") == Node("check", "t_fresh")
    with pytest.raises(UnknownName, match="did you mean 't_fresh'"):
        lineage.resolve("t_frsh")
    assert lineage.resolve("t") == Node("relation", "public.t"), "public first"
    with pytest.raises(UnknownName, match=r"did you mean 'other\.v' or 'third\.v'"):
        lineage.resolve("v")


def test_a_check_knows_what_it_watches() -> None:
    from tests.helpers import make_config as config_of

    config = config_of(
        None,
        None,
        """
        [[steps]]
        name = "s"
        kind = "matview"
        relation = "public.s"
        [[checks]]
        name = "f"
        kind = "freshness"
        table = "user_feedback"
        column = "created_at"
        step = "s"
        warn_after = "1m"
        error_after = "2m"
        [[checks]]
        name = "shape"
        kind = "schema"
        tables = ["public.a", "b.c"]
        """,
    )
    assert config.check("f").watches() == (("public.user_feedback",), ("s",))
    assert config.check("shape").watches() == (("public.a", "b.c"), ())
    assert watched_by_check({"source": "redis"}) == ((), ())


def test_the_tree_shows_a_shared_input_once_and_fits_80_columns() -> None:
    lineage = Lineage.build(
        [
            CatalogRelation("public.t", "table"),
            CatalogRelation("public.v1", "view", ("public.t",)),
            CatalogRelation("public.v2", "view", ("public.v1",)),
            CatalogRelation("public.m", "matview", ("public.t", "public.v2")),
        ]
    )
    assert lineage.tree() == [
        "t (table)",
        "├─ m (matview)",
        "└─ v1 (view)",
        "   └─ v2 (view)",
        "      └─ m (matview)",
    ]
    assert lineage.tree(Node("relation", "public.m"), "upstream") == [
        "m (matview)",
        "├─ t (table)",
        "└─ v2 (view)",
        "   └─ v1 (view)",
        "      └─ t (table)",
    ]


# ---------------------------------------------------------------------- root cause


async def test_a_stalled_feed_is_one_incident_with_its_cause_and_times(
    db: asyncpg.Connection,
) -> None:
    await publish(db)
    assessment = await assessed(db)
    incidents = assessment.incidents()
    assert [i.root for i in incidents] == ["user_feedback", "redis_hit_ratio"]
    feed = incidents[0]
    assert feed.root_kind == "table"
    assert feed.since == NOW - timedelta(minutes=18)
    assert feed.cause_text == (
        "`user_feedback` stopped receiving rows at 03:12 (freshness failing since 03:27); "
        "has user_feedback_volume warning since 03:40"
    )
    members = {(m.type, m.name): m.status for m in feed.members}
    assert members == {
        ("check", "user_feedback_freshness"): "fail",
        ("check", "user_feedback_volume"): "warn",
        ("check", "user_satisfaction_summary_freshness"): "fail",
        ("relation", "public.user_satisfaction_summary"): "stale",
        ("relation", "public.feedback_recent"): "stale",
        ("relation", "public.feedback_rated"): "stale",
        ("relation", "public.rating_daily"): "stale",
        ("relation", "public.rating_report"): "stale",
    }
    impacted = {i.name for i in feed.impacts}
    assert {"public.rating_report", "rating_report_rows", "public.rating_daily"} <= impacted
    assert "rule_performance_freshness" not in impacted
    assert feed.rerun in ("rating_daily", "user_satisfaction_summary")
    assert set(feed.checks) == {
        "user_feedback_freshness",
        "user_feedback_volume",
        "user_satisfaction_summary_freshness",
    }
    summary = assessment.explain(Node("relation", "public.user_satisfaction_summary"))
    assert summary.text.startswith(
        "`user_satisfaction_summary` is stale: its input `user_feedback` stopped receiving "
        "rows at 03:12 (freshness failing since 03:27)"
    )
    assert summary.text.endswith("; its last refresh at 03:30 succeeded on stale input")
    report = assessment.explain(Node("relation", "public.rating_report"))
    assert report.chain[0] == Node("relation", "public.rating_report")
    assert report.chain[-1] == Node("relation", "public.user_feedback")
    assert "(via `user_satisfaction_summary`)" in report.text
    assert not incidents[1].impacts, "the cache check watches no relation"


async def test_silenced_checks_do_not_count_and_a_failed_step_is_its_own_root(
    db: asyncpg.Connection,
) -> None:
    await publish(db, silenced={"user_feedback_freshness", "redis_hit_ratio"})
    await add_run(db, "failed", 2, trigger="retry", attempt=3, error="lock not available")
    assessment = await assessed(db)
    incidents = {i.root: i for i in assessment.incidents()}
    assert "redis_hit_ratio" not in incidents
    # The volume check still fails on user_feedback, so the table stays a root.
    assert incidents["user_feedback"].cause_text == (
        "`user_feedback` has user_feedback_volume warning since 03:40"
    )
    step = incidents["rule_effectiveness_summary"]
    assert step.root_kind == "step"
    assert step.cause_text == (
        "step `rule_effectiveness_summary` failed at 03:43 (attempt 3): lock not available"
    )
    assert step.rerun == "rule_effectiveness_summary"
    assert {m.name for m in step.members} == {
        "rule_effectiveness_summary",
        "public.rule_effectiveness_summary",
        "analytics.rule_board",
    }
    explained = assessment.explain(Node("check", "user_feedback_freshness"))
    assert explained.status == "silenced"
    assert explained.text.startswith("check `user_feedback_freshness` is fail but silenced until")


async def test_a_held_step_is_an_incident_with_its_gates_verdict(db: asyncpg.Connection) -> None:
    await publish(db)
    held = "held: rule_effectiveness_summary rows 16 → 3, below 50 % of the previous content"
    await add_run(db, "held", 2, error=held)
    assessment = await assessed(db)
    step = {i.root: i for i in assessment.incidents()}["rule_effectiveness_summary"]
    assert step.root_kind == "step"
    assert step.severity == CheckStatus.WARN
    assert step.cause_text == (
        "step `rule_effectiveness_summary` was held by its gates at 03:43: held:"
        " rule_effectiveness_summary rows 16 → 3, below 50 % of the previous content"
    )
    assert step.rerun == "rule_effectiveness_summary"


async def test_a_step_retrying_after_a_failure_stays_an_incident(db: asyncpg.Connection) -> None:
    """Failing on every attempt: between attempts the step must not read as running (ok)."""
    await publish(db)
    await add_run(db, "failed", 3, trigger="retry", attempt=2, error="lock not available")
    await add_run(db, "queued", 2, trigger="retry", attempt=3)
    assessment = await assessed(db)
    step = {i.root: i for i in assessment.incidents()}["rule_effectiveness_summary"]
    assert step.severity == CheckStatus.FAIL
    assert step.cause_text == (
        "step `rule_effectiveness_summary` failed and is retrying: attempt 3 queued since 03:43"
    )


# ---------------------------------------------------------------------- the verbs


async def cli(argv: list[str], database: str, tmp_path: Path) -> int:
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    return await asyncio.to_thread(main, [*argv, "--config", str(config)])


async def test_why_json_walks_view_matview_table_chains_from_the_catalog(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(db)
    code = await cli(["why", "rating_report", "--json"], database, tmp_path)
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["name"] == "public.rating_report"
    assert out["kind"] == "view"
    assert out["status"] == "stale"
    assert out["root"]["name"] == "public.user_feedback"
    assert out["root"]["kind"] == "table"
    chain = [(n["name"], n["kind"]) for n in out["chain"]]
    assert chain[0] == ("public.rating_report", "view")
    assert chain[-1] == ("public.user_feedback", "table")
    assert out["cause"].startswith("`user_feedback` stopped receiving rows at")

    # The long way round: view -> matview -> view -> view -> table.
    code = await cli(["why", "rating_daily", "--json"], database, tmp_path)
    out = json.loads(capsys.readouterr().out)
    assert [(n["name"], n["kind"]) for n in out["chain"]] == [
        ("public.rating_daily", "matview"),
        ("public.feedback_rated", "view"),
        ("public.feedback_recent", "view"),
        ("public.user_feedback", "table"),
    ]
    assert "rating_report_rows" in {i["name"] for i in out["impacts"]}

    code = await cli(["why", "rule_performance_freshness"], database, tmp_path)
    text = capsys.readouterr().out
    assert code == 0
    assert "is ok: nothing upstream of it is failing or stale" in text

    code = await cli(["why", "user_feedbak"], database, tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "no relation, step or check named 'user_feedbak'; did you mean 'user_feedback'" in err


async def test_lineage_verb_text_and_json(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(db)
    code = await cli(["lineage", "rating_report", "--upstream"], database, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == "rating_report (view)"
    assert "├─ rating_daily (matview)" in lines
    assert any(line.endswith("user_feedback (table)") for line in lines)
    assert all(len(line) <= 80 for line in lines)

    code = await cli(["lineage", "user_feedback", "--downstream", "--json"], database, tmp_path)
    out = json.loads(capsys.readouterr().out)
    ids = {n["id"] for n in out["nodes"]}
    assert out["start"]["id"] == "relation:public.user_feedback"
    assert {"relation:public.rating_report", "check:user_feedback_volume"} <= ids
    assert "relation:public.rule_performance" not in ids
    assert {"from": "relation:public.feedback_rated", "to": "relation:public.rating_daily"} in (
        out["edges"]
    )

    code = await cli(["lineage"], database, tmp_path)
    whole = capsys.readouterr().out
    assert "step user_satisfaction_summary\n" in whole
    assert "check user_feedback_freshness (freshness)" in whole

    code = await cli(["lineage", "nope"], database, tmp_path)
    assert code == 2
    assert "no relation, step or check named 'nope'" in capsys.readouterr().err


async def test_status_groups_not_ok_items_into_incidents(
    db: asyncpg.Connection, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(db)
    code = await cli(["status", "--json"], database, tmp_path)
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert {"taken_at", "status", "steps", "checks", "agents", "pending_requests"} <= set(out)
    roots = [i["root"] for i in out["incidents"]]
    assert roots == ["public.user_feedback", "redis_hit_ratio"]
    feed = out["incidents"][0]
    assert feed["severity"] == "fail"
    assert feed["cause"].startswith("`user_feedback` stopped receiving rows at")
    assert len(feed["members"]) == 8

    code = await cli(["status"], database, tmp_path)
    text = capsys.readouterr().out
    assert text.index("Incidents (2)") < text.index("Steps")
    assert "user_feedback (table)" in text
    assert "pipectl why user_feedback" in text


async def test_status_says_healthy_plainly(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute("INSERT INTO pipectl.steps (name, kind) VALUES ('s', 'sql')")
        await conn.execute(
            "INSERT INTO pipectl.agents (id, name, host, pid, version, heartbeat_seconds)"
            " VALUES (gen_random_uuid(), 'a1', 'h', 1, 'v', 3600)"
        )
    finally:
        await conn.close()
    code = await cli(["status"], database, tmp_path)
    text = capsys.readouterr().out
    assert code == 0
    assert "Healthy: all 0 checks ok, 0 steps ok (1 step not run yet)" in text


async def test_the_readme_prints_the_real_lineage_of_the_apes_preset(database: str) -> None:
    """The tree in README.md is what `pipectl lineage` prints for the preset on the APES
    schema with materialized summaries (what the agent publishes from config.example.toml)."""
    from pipectl.agent.lineage import facts
    from pipectl.config import load_config
    from pipectl.presets import apes_preset_path

    block = readme_block("$ pipectl lineage\n")
    config = load_config(apes_preset_path(), environ={}).config
    conn = await asyncpg.connect(database)
    try:
        relations = await catalog_relations(conn)
    finally:
        await conn.close()
    steps, checks = facts(config)
    assert Lineage.build(relations, steps, checks).tree() == block


def readme_block(after: str) -> list[str]:
    """The lines of README.md's code block that starts with `after`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    return readme.split(after, 1)[1].split("```", 1)[0].splitlines()
