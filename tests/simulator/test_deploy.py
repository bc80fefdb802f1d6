"""The deploy fault: alembic_version moves to a new revision, as an application deploy does."""

from __future__ import annotations

import asyncpg
import pytest

from pipectl.simulator import ApesSimulator, FaultError
from pipectl.simulator.engine import INITIAL_REVISION


async def _versions(database: str) -> list[str]:
    conn = await asyncpg.connect(database)
    try:
        return [r[0] for r in await conn.fetch("SELECT version_num FROM public.alembic_version")]
    finally:
        await conn.close()


async def test_setup_records_a_revision_once_and_deploy_moves_it(database: str) -> None:
    sim = ApesSimulator(database, None, seed=3)
    await sim.setup()
    await sim.setup()
    assert await _versions(database) == [INITIAL_REVISION]
    try:
        await sim.inject("deploy")
        first = await _versions(database)
        assert len(first) == 1 and first != [INITIAL_REVISION]
        await sim.inject("deploy", version="c0ffee42")
        assert await _versions(database) == ["c0ffee42"]
        with pytest.raises(FaultError, match="version must be 1 to 32"):
            await sim.inject("deploy", version="x" * 40)
        assert await _versions(database) == ["c0ffee42"]
    finally:
        await sim.close()
