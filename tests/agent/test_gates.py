"""Gates against real PostgreSQL: a refresh and its gates in one transaction; a failing gate
rolls the refresh back (readers keep the old content, the run is held with the evidence),
downstream steps do not run on it, and publish-anyway publishes it with the override noted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from pipectl import store
from pipectl.audit import audit_step, audit_transaction
from pipectl.db import connect
from pipectl.model import RequestKind
from pipectl.presets import apes_incremental_steps_text
from pipectl.request_args import PublishArgs, RerunArgs
from pipectl.simulator import ApesSimulator
from pipectl.store import incremental as incremental_store
from tests.agent.conftest import running_agent
from tests.helpers import make_config, wait_for
from tests.test_cli_ops import cli

KEYS = 16


@pytest.fixture
async def locker(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A second session of the test's own."""
    conn = await connect(make_config(database))
    yield conn
    await conn.close()


async def _done(db: asyncpg.Connection, request_id: int) -> asyncpg.Record | None:
    row = await db.fetchrow("SELECT * FROM pipectl.requests WHERE id = $1", request_id)
    return row if row and row["done_at"] else None


async def _runs(db: asyncpg.Connection, step: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM pipectl.runs WHERE step = $1 ORDER BY id", step)


async def _rerun(db: asyncpg.Connection, step: str, downstream: bool = False) -> asyncpg.Record:
    request = await store.create_request(
        db, RequestKind.RERUN, step, "test", RerunArgs(downstream=downstream)
    )
    return await wait_for(lambda: _done(db, request.id))


async def _summary(db: asyncpg.Connection, *, unique: bool) -> None:
    await db.execute(
        f"""
        CREATE TABLE public.gt_src (k int, v int);
        INSERT INTO public.gt_src SELECT g % {KEYS}, g FROM generate_series(1, 160) g;
        CREATE MATERIALIZED VIEW public.gt_sum AS
            SELECT k, count(*) AS n FROM public.gt_src GROUP BY k;
        CREATE TABLE public.gt_block (x int);
        """
    )
    if unique:
        await db.execute("CREATE UNIQUE INDEX ON public.gt_sum (k)")


GATED = """
[[steps]]
name = "gt"
kind = "matview"
relation = "public.gt_sum"
[steps.gates]
row_count = {{ min_ratio = 0.5, max_ratio = 3 }}
not_null = ["k"]
groups = {{ keys = ["k"], max_lost = 0.25 }}
{checks}

[[steps]]
name = "after_gt"
kind = "sql"
sql = "SELECT 1"
depends_on = ["gt"]

[[checks]]
name = "gt_block_empty"
kind = "quality"
table = "public.gt_block"
every = "1h"
timeout = "60s"
rule = {{ type = "custom", sql = "SELECT count(*) FROM public.gt_block" }}
fail_over = 0
"""


@pytest.mark.parametrize("unique", [True, False], ids=["concurrently", "plain"])
async def test_matview_gate_passes_then_holds_then_publish_anyway(
    database: str, db: asyncpg.Connection, unique: bool
) -> None:
    await _summary(db, unique=unique)
    async with running_agent(database, GATED.format(checks='checks = ["gt_block_empty"]')):
        first = await _rerun(db, "gt")
        assert first["outcome"] == "succeeded", first["detail"]
        (ok,) = await _runs(db, "gt")
        assert ok["detail"]["concurrently"] is unique
        gates = {g["gate"]: g for g in ok["detail"]["gates"]}
        assert set(gates) == {"row_count", "not_null", "groups", "check gt_block_empty"}
        assert all(g["passed"] for g in gates.values())
        assert gates["row_count"]["value"] == KEYS and gates["row_count"]["previous"] == KEYS

        # An input breaks: 13 of the 16 groups vanish.
        await db.execute("DELETE FROM public.gt_src WHERE k >= 3")
        held_request = await _rerun(db, "gt", downstream=True)
        assert held_request["outcome"] == "failed"
        held = (await _runs(db, "gt"))[-1]
        assert held["status"] == "held"
        assert held["rows"] == 3
        assert held["error"] == (
            "held: gt_sum rows 16 → 3, below 50 % of the previous content; "
            "gt_sum groups (k): 13 of 16 lost (81 %; limit 25 %)"
        )
        failed = [g for g in held["detail"]["gates"] if not g["passed"]]
        assert [(g["gate"], g["value"], g["previous"]) for g in failed] == [
            ("row_count", 3, 16),
            ("groups", 13, 16),
        ]
        # Readers (another session) still see the previous content.
        assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == KEYS
        # Downstream does not run on a held step.
        (after,) = await _runs(db, "after_gt")
        assert after["status"] == "skipped"
        assert after["error"].startswith(f"upstream gt held (run {held['id']})")
        event = await db.fetchrow("SELECT * FROM pipectl.events WHERE kind = 'step.held'")
        assert event["subject"] == "gt" and event["detail"]["run_id"] == held["id"]
        states = await store.state_runs(db, ["gt"])
        assert states["gt"].status == "held"

        # Publish anyway names the held run; a stale id is refused.
        stale = await store.create_request(
            db, RequestKind.PUBLISH, "gt", "wrong run", PublishArgs(run=ok["id"])
        )
        assert (await wait_for(lambda: _done(db, stale.id)))["outcome"] == "rejected"
        assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == KEYS
        publish = await store.create_request(
            db, RequestKind.PUBLISH, "gt", "source pruned on purpose", PublishArgs(run=held["id"])
        )
        published_request = await wait_for(lambda: _done(db, publish.id))
        assert published_request["outcome"] == "succeeded", published_request["detail"]
        published = (await _runs(db, "gt"))[-1]
        assert published["status"] == "succeeded"
        assert published["parent_run_id"] == held["id"]
        assert published["requested_by"] == published_request["requested_by"]
        assert published["detail"]["gates_overridden"].startswith("held: gt_sum rows 16 → 3")
        assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == 3
        audit = await db.fetchrow("SELECT * FROM pipectl.events WHERE kind = 'step.publish'")
        assert audit["actor"] == published_request["requested_by"]
        assert "source pruned on purpose" in audit["message"]
        # The unscheduled downstream step runs once its upstream is published.
        await wait_for(
            lambda: _has(db, "after_gt", "succeeded"),
        )


async def _has(db: asyncpg.Connection, step: str, status: str) -> bool:
    return any(r["status"] == status for r in await _runs(db, step))


async def test_readers_see_the_old_content_while_gates_run(
    database: str, db: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    """CONCURRENTLY: while the gate's check waits on a lock the test holds, the summary
    already refreshed in the agent's transaction stays invisible to other sessions."""
    await _summary(db, unique=True)
    await db.execute("INSERT INTO public.gt_src SELECT 99, 1")  # one more group, unpublished
    async with running_agent(database, GATED.format(checks='checks = ["gt_block_empty"]')):
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE public.gt_block IN ACCESS EXCLUSIVE MODE")
        request = await store.create_request(db, RequestKind.RERUN, "gt", "test")
        await wait_for(lambda: _waiting_on_lock(db))
        assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == KEYS
        await transaction.rollback()
        row = await wait_for(lambda: _done(db, request.id))
        assert row["outcome"] == "succeeded", row["detail"]
    assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == KEYS + 1


async def _waiting_on_lock(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pipectl-agent%: gt'"
            " AND wait_event_type = 'Lock'"
        )
    )


async def test_sql_step_gate_holds_and_rolls_back(database: str, db: asyncpg.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE public.gt_daily (day int PRIMARY KEY, total int);
        INSERT INTO public.gt_daily SELECT g, g FROM generate_series(1, 10) g;
        CREATE TABLE public.gt_feed (day int, amount int);
        INSERT INTO public.gt_feed SELECT g, 1 FROM generate_series(1, 10) g;
        """
    )
    body = """
    [[steps]]
    name = "daily"
    kind = "sql"
    sql = \"\"\"
    DELETE FROM public.gt_daily;
    INSERT INTO public.gt_daily SELECT day, sum(amount) FROM public.gt_feed GROUP BY day
    \"\"\"
    [steps.gates]
    relation = "public.gt_daily"
    row_count = { min_ratio = 0.8 }
    not_null = ["total"]
    """
    async with running_agent(database, body) as agent:
        assert (await _rerun(db, "daily"))["outcome"] == "succeeded"
        assert await db.fetchval("SELECT sum(total) FROM public.gt_daily") == 10
        await db.execute("DELETE FROM public.gt_feed WHERE day > 2")
        await db.execute("INSERT INTO public.gt_feed VALUES (1, 5)")
        assert (await _rerun(db, "daily"))["outcome"] == "failed"
        (shared,) = [s for s in (await store.shared_state(db)).steps if s.name == "daily"]
        assert shared.held and not shared.failing

        # Every agent exports the hold (shared state, refreshed with its heartbeat).
        async def exported() -> bool:
            value = agent.metrics.registry.get_sample_value("pipectl_step_held", {"step": "daily"})
            return value == 1.0

        await wait_for(exported, timeout=20)
    held = (await _runs(db, "daily"))[-1]
    assert held["status"] == "held"
    assert held["error"] == "held: gt_daily rows 10 → 2, below 80 % of the previous content"
    # Rolled back: the statement's DELETE and INSERT never became visible.
    assert await db.fetchval("SELECT count(*) FROM public.gt_daily") == 10
    assert await db.fetchval("SELECT sum(total) FROM public.gt_daily") == 10


async def test_gate_on_missing_column_holds_with_the_reason(
    database: str, db: asyncpg.Connection
) -> None:
    await _summary(db, unique=True)
    body = """
    [[steps]]
    name = "gt"
    kind = "matview"
    relation = "public.gt_sum"
    gates = { not_null = ["no_such_column"] }
    """
    async with running_agent(database, body):
        assert (await _rerun(db, "gt"))["outcome"] == "failed"
    (run,) = await _runs(db, "gt")
    assert run["status"] == "held"
    assert run["error"] == "held: not evaluated: public.gt_sum has no column no_such_column"


async def test_cli_status_shows_held_and_publish_names_the_held_run(
    database: str, db: asyncpg.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _summary(db, unique=True)
    body = GATED.format(checks="")
    config_file = tmp_path / "pipectl.toml"
    config_file.write_text(f'[database]\ndsn = "{database}"\n' + body)
    config = ("--config", str(config_file))
    async with running_agent(database, body):
        assert (await _rerun(db, "gt"))["outcome"] == "succeeded"
        code, _, err = await cli(capsys, "publish", "gt", "--reason", "x", *config)
        assert code == 2 and "gt is not held (its latest run " in err
        await db.execute("DELETE FROM public.gt_src WHERE k >= 3")
        assert (await _rerun(db, "gt"))["outcome"] == "failed"
        held = (await _runs(db, "gt"))[-1]

        code, data, _ = await cli(capsys, "status", "--json", *config)
        (step,) = [s for s in data["steps"] if s["name"] == "gt"]
        assert step["status"] == "held" and step["state_run_id"] == held["id"]
        assert {g["gate"] for g in step["gates"] if not g["passed"]} == {"row_count", "groups"}
        code, text, _ = await cli(capsys, "status", *config)
        assert "‖ held" in text and "gt_sum rows 16 → 3" in text

        code, _, err = await cli(capsys, "publish", "gt", *config)
        assert code == 2 and "publish needs --reason" in err
        code, out, _ = await cli(
            capsys, "publish", "gt", "--reason", "pruned on purpose", "--wait", *config
        )
        assert code == 0, out
        assert f"publishing held run {held['id']} of gt: held: gt_sum rows 16 → 3" in out
        code, history, _ = await cli(capsys, "history", "gt", "--json", *config)
        published, was_held = history[0], history[1]
        assert was_held["id"] == held["id"] and was_held["status"] == "held"
        assert {g["gate"]: g["previous"] for g in was_held["gates"]}["row_count"] == 16
        assert published["gates_overridden"].startswith("held: gt_sum rows 16 → 3")
    assert await db.fetchval("SELECT count(*) FROM public.gt_sum") == 3
    request = await db.fetchrow("SELECT * FROM pipectl.requests WHERE kind = 'publish'")
    assert request["args"] == {"run": held["id"]} and request["reason"] == "pruned on purpose"


def _preset_steps() -> str:
    """The preset's [[steps]] (with their gates), as config.example.toml has them."""
    text = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text()
    return text[text.index("[[steps]]") : text.index("[[checks]]")]


async def test_preset_gates_hold_the_summary_when_the_demo_input_breaks(
    database: str, db: asyncpg.Connection
) -> None:
    """The demo's broken_input fault (most rules' rows gone from rule_performance) makes the
    preset's gates hold rule_effectiveness_summary; clearing it lets the next refresh pass."""
    step = "rule_effectiveness_summary"
    async with _two_days_of_apes(database) as sim, running_agent(database, _preset_steps()):
        assert (await _rerun(db, step))["outcome"] == "succeeded"
        assert (await _rerun(db, step))["outcome"] == "succeeded"
        rules = await db.fetchval(f"SELECT count(*) FROM public.{step}")
        assert rules > 6
        await _break_input_and_hold(db, sim, step, rules)
        assert await db.fetchval(f"SELECT count(*) FROM public.{step}") == rules
        await sim.clear("broken_input")
        assert (await _rerun(db, step))["outcome"] == "succeeded"
        assert await db.fetchval(f"SELECT count(*) FROM public.{step}") == rules


@asynccontextmanager
async def _two_days_of_apes(database: str) -> AsyncIterator[ApesSimulator]:
    """The demo's simulator (its faults), with two days of APES history behind it."""
    sim = ApesSimulator(database, None, seed=3)
    try:
        await sim.setup()
        await sim.backfill(2)
        yield sim
    finally:
        await sim.close()


async def _break_input_and_hold(
    db: asyncpg.Connection, sim: ApesSimulator, step: str, rows: int
) -> None:
    """The demo's broken_input fault (all but 3 rules' rows set aside): the next refresh of
    the summary is held by the preset's row-count gate."""
    await sim.inject("broken_input", keep=3)
    assert (await _rerun(db, step))["outcome"] == "failed"
    held = (await _runs(db, step))[-1]
    assert held["status"] == "held"
    assert held["error"].startswith(
        f"held: {step} rows {rows} → 3, below 50 % of the previous content"
    )


async def test_scheduled_downstream_is_skipped_while_its_upstream_is_held(
    database: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE TABLE public.gt_nulls (x int); INSERT INTO public.gt_nulls VALUES (NULL)"
    )
    body = """
    [[steps]]
    name = "up"
    kind = "sql"
    sql = "SELECT 1"
    every = "1s"
    gates = { relation = "public.gt_nulls", not_null = ["x"] }

    [[steps]]
    name = "down"
    kind = "sql"
    sql = "SELECT 1"
    every = "1s"
    depends_on = ["up"]
    """
    async with running_agent(database, body):
        await wait_for(lambda: _has(db, "down", "skipped"), timeout=15)
    skipped = next(r for r in await _runs(db, "down") if r["status"] == "skipped")
    held = [r for r in await _runs(db, "up") if r["status"] == "held"]
    assert held and held[0]["error"] == "held: gt_nulls: 1 of 1 rows have NULL in x"
    assert skipped["error"].startswith("upstream up held (run ")
    assert skipped["error"].endswith("): gt_nulls: 1 of 1 rows have NULL in x")
    assert not await _has(db, "down", "succeeded")


async def test_preset_gates_hold_the_incremental_summary_when_the_demo_input_breaks(
    database: str, db: asyncpg.Connection
) -> None:
    """`pipectl demo --incremental`'s summaries under the demo's broken_input fault: the
    rows set aside reach the incremental refresh through its invalidation triggers, the
    preset's gates hold the publication (summary and partial state as they were), and once
    the rows are back the next refresh publishes exactly what the defining query gives."""
    body = apes_incremental_steps_text()
    step = "rule_effectiveness_summary"
    steps = make_config(database, None, body).steps
    config = next(s for s in steps if s.name == step)
    async with _two_days_of_apes(database) as sim:
        async with db.transaction():
            for summary in steps:  # as `pipectl db incremental --triggers` does
                await incremental_store.install(db, summary, triggers=True)
        async with running_agent(database, body):
            assert (await _rerun(db, step))["outcome"] == "succeeded"
            before = await db.fetch(f"SELECT * FROM public.{step} ORDER BY 1")
            assert len(before) > 6
            await _break_input_and_hold(db, sim, step, len(before))
            assert await db.fetch(f"SELECT * FROM public.{step} ORDER BY 1") == before
            await sim.clear("broken_input")
            assert (await _rerun(db, step))["outcome"] == "succeeded"
            assert len(await db.fetch(f"SELECT * FROM public.{step}")) == len(before)
            async with audit_transaction(db, timedelta(minutes=1)):
                found = await audit_step(db, config)
            assert (found.only_in_summary, found.only_in_recompute) == (0, 0), found
