"""`pipectl audit` as an operator: it only reads, so pipectl_operator plus SELECT on the
summary and the tables its definition reads is all it takes; without them, a message that
says which grant is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipectl.identifiers import quote_ident
from tests.reliability.conftest import as_user
from tests.test_audit import STEP, add_rows, refreshed, run


async def test_an_operator_audits_with_select_on_the_summary_and_its_inputs(
    database: str,
    login_role: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = await asyncpg.connect(database)
    try:
        await add_rows(db, "r0", 4, 0.2)
        await refreshed(db)
    finally:
        await db.close()
    operator = await login_role("pipectl_operator")
    as_operator = as_user(database, operator)

    code, _, err = await run(capsys, tmp_path, as_operator, STEP)
    assert code == 2
    assert "grant it SELECT on them" in err

    db = await asyncpg.connect(database)
    try:
        await db.execute(
            f"GRANT SELECT ON public.{STEP}, public.rule_performance TO {quote_ident(operator)}"
        )
    finally:
        await db.close()
    code, text, _ = await run(capsys, tmp_path, as_operator, STEP)
    assert code == 0, text
    assert text.startswith(f"{STEP}: equal: 1 row")
