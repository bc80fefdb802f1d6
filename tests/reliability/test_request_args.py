"""Request rows with malformed arguments, inserted with plain SQL by an operator (what anyone
with INSERT on pipectl.requests can do): every console that opens the Requests screen and
`pipectl history --requests` show them without crashing, and the agent rejects each with a
reason a person can read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipectl.console.screens.requests import RequestsScreen
from pipectl.safetext import visible
from tests.agent.conftest import running_agent
from tests.console.conftest import console_app, settle
from tests.console.test_screens import cell, table_of
from tests.reliability.conftest import as_user
from tests.reliability.support import (
    connected,
    file_request,
    freshness_check,
    wait_request_done,
)
from tests.test_cli_ops import cli

STEP = "rule_effectiveness_summary"
CHECK = "rule_performance_freshness"
UNSCHEDULED_STEPS = f"""
[[steps]]
name = "{STEP}"
kind = "matview"
relation = "public.{STEP}"

[[steps]]
name = "user_satisfaction_summary"
kind = "matview"
relation = "public.user_satisfaction_summary"
depends_on = ["{STEP}"]
"""
HOSTILE_KEY = "[bold red]boom[/]\x1b[2J"

# (kind, target, args as JSON text, the agent's reason)
MALFORMED = [
    ("rerun", STEP, "[1, 2]", "request arguments must be a JSON object"),
    ("rerun", STEP, '"downstream"', "request arguments must be a JSON object"),
    ("rerun", STEP, "[" * 3000 + "]" * 3000, "request arguments must be a JSON object"),
    ("rerun", STEP, '{"downstream": "yes"}', "'downstream' must be true or false"),
    (
        "rerun",
        STEP,
        '{"downstream": true, "steps": ["user_satisfaction_summary"]}',
        "unknown argument 'steps' for a rerun request (allowed: downstream)",
    ),
    (
        "pause",
        STEP,
        '{"until": "2099-01-01"}',
        "unknown argument 'until' for a pause request (allowed: none)",
    ),
    (
        "check",
        CHECK,
        json.dumps({HOSTILE_KEY: 1}),
        f"unknown argument {HOSTILE_KEY!r} for a check request (allowed: none)",
    ),
    ("silence", CHECK, "{}", "a silence request needs 'seconds'"),
    ("silence", CHECK, '{"seconds": "3600"}', "silence needs 'seconds' > 0"),
    ("silence", CHECK, '{"seconds": 1e300}', "silences are limited to 30 days"),
    ("silence", CHECK, '{"seconds": ' + "9" * 4500 + "}", "silences are limited to 30 days"),
]


async def _insert_as_operator(database: str, operator: str) -> list[int]:
    async with connected(as_user(database, operator)) as conn:
        return [
            await conn.fetchval(
                "INSERT INTO pipectl.requests (kind, target, args)"
                " VALUES ($1, $2, $3::text::jsonb) RETURNING id",
                kind,
                target,
                args,
            )
            for kind, target, args, _ in MALFORMED
        ]


async def _requests_screen(
    database: str, ids: list[int], rows: int | None = None
) -> dict[str, tuple[str, str]]:
    """The Requests screen's kind and outcome cells of each of `ids`, once all `rows` rows
    (by default one per id) are shown."""
    app = console_app(database, fixed_clock=False)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.press("5")
        await settle(
            pilot,
            lambda: (
                isinstance(app.screen, RequestsScreen)
                and app.screen.snapshot is not None
                and table_of(app).row_count == (rows or len(ids))
            ),
        )
        table = table_of(app)
        shown = {str(i): (cell(table, str(i), "kind"), cell(table, str(i), "detail")) for i in ids}
        assert app.is_running
    return shown


async def test_malformed_request_args_are_shown_then_rejected_with_the_reason(
    capsys: pytest.CaptureFixture[str],
    database: str,
    login_role: Callable[..., Any],
    tmp_path: Path,
) -> None:
    ids = await _insert_as_operator(database, await login_role("pipectl_operator"))
    config = tmp_path / "viewer.toml"
    config.write_text(
        f'[database]\ndsn = "{as_user(database, await login_role("pipectl_viewer"))}"\n'
    )

    # Queued and unread by any agent: the console and the CLI show them as they are.
    shown = await _requests_screen(database, ids)
    kinds = [shown[str(i)][0] for i in ids]
    assert kinds == [f"{kind} bad args" for kind, *_ in MALFORMED]
    code, listed, err = await cli(
        capsys, "history", "--requests", "--json", "--config", str(config)
    )
    assert code == 0, err
    by_id = {r["id"]: r for r in listed}
    for request_id, (_, _, _, reason) in zip(ids, MALFORMED, strict=True):
        assert by_id[request_id]["args"] is None
        assert by_id[request_id]["args_error"] == reason
    code, text, err = await cli(capsys, "history", "--requests", "--config", str(config))
    assert code == 0, err
    assert text.count("bad args") == len(MALFORMED)
    assert "\x1b" not in text and "Traceback" not in err

    # The agent rejects each with the reason, and carries on with good requests. The steps
    # have no schedule, so every run in the table was asked for.
    async with running_agent(database, UNSCHEDULED_STEPS + freshness_check("1h")):
        outcomes = await asyncio.gather(*(wait_request_done(database, i) for i in ids))
        async with connected(database) as conn:
            runs = await conn.fetchval("SELECT count(*) FROM pipectl.runs")
            silenced = await conn.fetchval(
                "SELECT count(*) FROM pipectl.checks WHERE silenced_until IS NOT NULL"
            )
        good = await file_request(database, "rerun", STEP)
        assert await wait_request_done(database, good.id) == "succeeded"
    assert outcomes == ["rejected"] * len(MALFORMED)
    assert runs == 0 and silenced == 0, "a rejected request changed something"
    async with connected(database) as conn:
        details = await conn.fetch(
            "SELECT id, detail FROM pipectl.requests WHERE id = ANY($1) ORDER BY id", ids
        )
    assert [r["detail"] for r in details] == [reason for *_, reason in MALFORMED]

    # Finished, they still show, now with the agent's reason (beside the good request).
    shown = await _requests_screen(database, ids, rows=len(ids) + 1)
    for request_id, (_, _, _, reason) in zip(ids, MALFORMED, strict=True):
        assert shown[str(request_id)][1] == visible(reason, limit=60)
