"""Check kinds are registered, not wired in: a kind written here (its model, probe and
evaluation in one place) plus one `register` call parses, validates against the catalog, runs
alone and on a shared probe, with no line of the core or the engine knowing it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Literal

import asyncpg
import pytest
from pydantic import Field

from pipectl.checks import CheckEngine, registry
from pipectl.checks.base import Context, KindSpec, Riding
from pipectl.checks.catalog import Need
from pipectl.checks.sql import Params, Query
from pipectl.config import (
    CHECK_KINDS,
    CheckBase,
    ConfigError,
    RelationName,
    effective_items,
    parse_config_text,
)
from pipectl.model import CheckResult, CheckStatus
from tests.checks.conftest import NOW
from tests.checks.data import add_rule_performance
from tests.helpers import make_config, make_loaded

# --- the whole kind -----------------------------------------------------------------------


class RowCountCheck(CheckBase):
    """At least `min_rows` rows in `table`."""

    kind: Literal["row_count"]
    table: RelationName
    min_rows: int = Field(ge=0)


def query(check: RowCountCheck) -> Query:
    return Query(f"SELECT count(*) AS n FROM {check.table.sql}", Params())


def evaluate(check: RowCountCheck, rows: int, ctx: Context[RowCountCheck]) -> CheckResult:
    status = CheckStatus.OK if rows >= check.min_rows else CheckStatus.FAIL
    message = f"{rows} rows in {check.table} (at least {check.min_rows})"
    return CheckResult(check.name, status, float(rows), message, ctx.now)


async def run(ctx: Context[RowCountCheck]) -> CheckResult:
    row = await query(ctx.check).fetchrow(ctx.conn)
    return evaluate(ctx.check, int(row["n"]), ctx)


async def run_shared(
    ctx: Context[RowCountCheck], checks: Sequence[RowCountCheck], riders: Sequence[Riding]
) -> list[CheckResult]:
    """Every check of one table from one count."""
    row = await query(ctx.check).fetchrow(ctx.conn)
    return [evaluate(check, int(row["n"]), ctx) for check in checks]


KIND = KindSpec[RowCountCheck](
    model=RowCountCheck,
    needs=lambda check: [Need("table", check.table)],
    sql=lambda check, config: query(check).sql,
    target=lambda check: str(check.table),
    describe=lambda check: check.description or f"rows in {check.table}",
    run=run,
    share_key=lambda check: check.table,
    run_shared=run_shared,
)

# ------------------------------------------------------------------------------------------

BODY = """
[[checks]]
name = "some_rules"
kind = "row_count"
table = "public.rule_performance"
min_rows = 3

[[checks]]
name = "many_rules"
kind = "row_count"
table = "public.rule_performance"
min_rows = 1000

[[checks]]
name = "some_feedback"
kind = "row_count"
table = "public.user_feedback"
min_rows = 0

[[checks]]
name = "rules_fresh"
kind = "freshness"
table = "public.rule_performance"
column = "created_at"
warn_after = "1h"
error_after = "2h"
"""


@pytest.fixture
def row_count_kind() -> Iterator[None]:
    registry.register(KIND)
    try:
        yield
    finally:
        registry.unregister("row_count")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(textwrap.dedent(text).lstrip("\n"), "bad.toml", environ={})
    return [str(p) for p in caught.value.problems]


def test_a_kind_nobody_registered_is_an_unknown_kind() -> None:
    assert "row_count" not in CHECK_KINDS
    assert problems(BODY)[0] == (
        "bad.toml:1: checks.some_rules: unknown check kind 'row_count'; expected one of"
        " freshness, volume, metric, quality, schema, cache, version, audit"
    )


@pytest.mark.usefixtures("row_count_kind")
async def test_a_registered_kind_parses_validates_and_runs(
    conn: asyncpg.Connection, database: str
) -> None:
    loaded = make_loaded(database, None, BODY)
    config = loaded.config
    check = config.check("many_rules")
    assert isinstance(check, RowCountCheck) and check.min_rows == 1000
    assert ("checks.many_rules.min_rows", "1000", "test.toml:17") in effective_items(loaded)

    await add_rule_performance(conn, [NOW - timedelta(minutes=m) for m in range(5)])
    engine = CheckEngine(config)
    await engine.validate(conn)
    names = ["some_rules", "many_rules", "some_feedback", "rules_fresh"]
    assert engine.probe_units(names) == [
        ["some_rules", "many_rules"],
        ["some_feedback"],
        ["rules_fresh"],
    ]
    results = await engine.run_many(names, conn, redis=None, now=NOW)
    assert {n: (r.status, r.value) for n, r in results.items()} == {
        "some_rules": (CheckStatus.OK, 5.0),
        "many_rules": (CheckStatus.FAIL, 5.0),
        "some_feedback": (CheckStatus.OK, 0.0),
        "rules_fresh": (CheckStatus.OK, 0.0),
    }
    assert results["many_rules"].baseline["probe_shared_by"] == 2  # one count for both
    assert "probe_shared_by" not in results["some_feedback"].baseline
    alone = await engine.run("many_rules", conn, redis=None, now=NOW)
    assert (alone.status, alone.message) == (
        CheckStatus.FAIL,
        "5 rows in public.rule_performance (at least 1000)",
    )

    published = {d.name: d for d in engine.definitions()}["many_rules"]
    assert (published.kind, published.target) == ("row_count", "public.rule_performance")
    assert published.sql == 'SELECT count(*) AS n FROM "public"."rule_performance"'
    assert published.definition["min_rows"] == 1000


@pytest.mark.usefixtures("row_count_kind")
async def test_a_registered_kind_is_checked_against_the_catalog(
    conn: asyncpg.Connection, database: str
) -> None:
    body = BODY.replace("public.user_feedback", "public.user_feedbak")
    with pytest.raises(ConfigError) as caught:
        await CheckEngine(make_config(database, None, body)).validate(conn)
    assert [str(p) for p in caught.value.problems] == [
        "config: checks.some_feedback.table: public.user_feedbak does not exist (or is not visible)"
    ]


@pytest.mark.usefixtures("row_count_kind")
def test_a_registered_kind_gets_located_errors_and_key_hints() -> None:
    assert problems(
        """
        [[checks]]
        name = "some_rules"
        kind = "row_count"
        table = "public.rule_performance"
        min_rows = -1
        min_row = 2
        """
    ) == [
        "bad.toml:5: checks.some_rules.min_rows: Input should be greater than or equal to 0",
        "bad.toml:6: checks.some_rules.min_row: unknown key 'min_row'; did you mean 'min_rows'?",
    ]


def test_one_kind_name_cannot_mean_two_models() -> None:
    class Impostor(CheckBase):
        kind: Literal["freshness"]

    with pytest.raises(ValueError, match="check kind 'freshness' is registered twice"):
        CHECK_KINDS.register(Impostor)


def test_a_key_named_like_a_kind_keeps_its_place_in_the_location() -> None:
    assert problems(
        """
        [agent]
        schema = 1
        """
    ) == ["bad.toml:2: agent.schema: unknown key 'schema'"]
    assert problems(
        """
        [[checks]]
        name = "c"
        kind = "schema"
        tables = ["public.t"]
        cache = true
        """
    ) == ["bad.toml:5: checks.c.cache: unknown key 'cache'"]


def test_a_program_that_never_registered_the_kinds_fails_loudly() -> None:
    script = textwrap.dedent(
        """
        import sys
        from pipectl.config import parse_config_text
        assert not any(m.startswith("pipectl.checks") for m in sys.modules)
        parse_config_text('[[checks]]\\nname = "c"\\nkind = "freshness"\\n', environ={})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "pipectl.config.UnregisteredCheckKinds: cannot read check kind 'freshness': no check"
        " kinds are registered in this program; its entry point must import pipectl.checks"
        " before loading a config"
    )
