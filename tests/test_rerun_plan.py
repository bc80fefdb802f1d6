"""One rerun plan: `pipectl rerun --dry-run` (as a read-only viewer), the console's rerun
dialog and the agent's execution list the same steps in the same order. Sibling steps are
where they used to part: the agent ran them in config order, the dialog by name."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pipectl.console.screens.dialogs import RerunDialog
from pipectl.console.screens.overview import OverviewScreen
from pipectl.model import RequestKind
from pipectl.request_args import RerunArgs
from tests.agent.conftest import running_agent
from tests.checks.test_cli import viewer_role
from tests.conftest import PgServer
from tests.console.conftest import console_app, settle
from tests.console.test_screens import table_of
from tests.helpers import wait_for
from tests.reliability.support import file_request
from tests.test_cli_ops import cli

# Config order puts zeta before alpha (the agent's old tie-break) and `rollup` (after zeta)
# before both, so neither config order nor depth-first order is the answer.
SIBLINGS = """
[[steps]]
name = "root"
kind = "sql"
sql = "SELECT 1"

[[steps]]
name = "rollup"
kind = "sql"
sql = "SELECT 1"
depends_on = ["zeta_summary"]

[[steps]]
name = "zeta_summary"
kind = "sql"
sql = "SELECT 1"
depends_on = ["root"]

[[steps]]
name = "alpha_summary"
kind = "sql"
sql = "SELECT 1"
depends_on = ["root"]

[[steps]]
name = "unrelated"
kind = "sql"
sql = "SELECT 1"
"""

EXPECTED = ["root", "alpha_summary", "zeta_summary", "rollup"]


async def _dialog_preview(database: str) -> list[str]:
    """What the console's rerun-with-downstream dialog lists for `root`."""
    app = console_app(database, fixed_clock=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(
            pilot, lambda: isinstance(app.screen, OverviewScreen) and table_of(app).row_count == 5
        )
        table = table_of(app)
        table.move_cursor(row=table.get_row_index("root"))
        await pilot.press("R")
        dialog = await settle(pilot, lambda: isinstance(app.screen, RerunDialog) and app.screen)
        names = [s.name for s in dialog.plan.steps]
        await pilot.press("escape")
    return names


async def test_dry_run_dialog_and_agent_agree_on_the_order_of_siblings(
    capsys: pytest.CaptureFixture[str], database: str, pg_server: PgServer, tmp_path: Path
) -> None:
    async with viewer_role(database, pg_server) as (as_viewer, admin):
        config = tmp_path / "viewer.toml"
        config.write_text(f'[database]\ndsn = "{as_viewer}"\n')
        async with running_agent(database, SIBLINGS):  # publishes the steps, runs the rerun
            code, dry, err = await cli(
                capsys, "rerun", "root", "--downstream", "--dry-run", "--json",
                "--config", str(config),
            )  # fmt: skip
            assert code == 0, err
            planned = [s["name"] for s in dry["steps"]]
            assert [s["position"] for s in dry["steps"]] == [1, 2, 3, 4]
            assert all(s["history_runs"] == 0 for s in dry["steps"])
            assert dry["expected_p50_s"] is None

            previewed = await _dialog_preview(database)

            request = await file_request(
                database, RequestKind.RERUN, "root", RerunArgs(downstream=True)
            )

            async def finished() -> bool:
                return bool(
                    await admin.fetchval(
                        "SELECT done_at IS NOT NULL FROM pipectl.requests WHERE id = $1",
                        request.id,
                    )
                )

            await wait_for(finished)
            executed = [
                r["step"]
                for r in await admin.fetch(
                    "SELECT step FROM pipectl.runs WHERE request_id = $1 ORDER BY started_at, id",
                    request.id,
                )
            ]

            # With history, the same plan carries expected durations.
            code, text, _ = await cli(
                capsys, "rerun", "root", "--downstream", "--dry-run", "--config", str(config)
            )
        assert await admin.fetchval("SELECT count(*) FROM pipectl.requests") == 1, "dry run filed"
    assert planned == previewed == executed == EXPECTED
    assert code == 0
    lines = [line.split() for line in text.splitlines()]
    rows = [line for line in lines if line and line[0] in {"1", "2", "3", "4"}]
    assert [row[1] for row in rows] == EXPECTED
    assert "no history" not in text and "expected in total: p50" in text


async def test_dry_run_of_one_step_says_no_history_and_unknown_steps_fail(
    capsys: pytest.CaptureFixture[str], database: str, tmp_path: Path
) -> None:
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{database}"\n')
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO pipectl.steps (name, kind, depends_on) VALUES"
            " ('root', 'sql', '{}'), ('zeta_summary', 'sql', '{root}'),"
            " ('alpha_summary', 'sql', '{root}')"
        )
        code, text, _ = await cli(capsys, "rerun", "root", "--dry-run", "--config", str(config))
        assert code == 0
        assert "would run 1 step," in text and "no history" in text
        assert "alpha_summary" not in text
        code, _, err = await cli(capsys, "rerun", "nope", "--dry-run", "--config", str(config))
        assert code == 2 and "unknown step 'nope'" in err
        code, _, err = await cli(
            capsys, "rerun", "root", "--dry-run", "--wait", "--config", str(config)
        )
        assert code == 2 and "nothing to --wait for" in err
        assert await conn.fetchval("SELECT count(*) FROM pipectl.requests") == 0
    finally:
        await conn.close()
