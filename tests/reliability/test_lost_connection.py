"""A verb whose database goes away mid-way: exit 3 (could not find out) with one line on
stderr, never a traceback (issue 13 §5). PostgreSQL here is a server of the test's own, shut
down fast (SIGINT), immediately (SIGQUIT, as after a crash) or killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from pipectl.cli.common import connection_lost
from pipectl.embedded import EmbeddedPostgres
from tests.agent.conftest import REPO
from tests.helpers import wait_for
from tests.reliability.support import fetchval


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT, signal.SIGKILL])
async def test_rerun_wait_exits_3_when_postgres_goes_away_mid_wait(
    own_postgres: EmbeddedPostgres, tmp_path: Path, signum: signal.Signals
) -> None:
    dsn = own_postgres.dsn()
    await fetchval(dsn, "INSERT INTO pipectl.steps (name, kind) VALUES ('rollup', 'sql')")
    config = tmp_path / "pipectl.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n')
    verb = [sys.executable, "-m", "pipectl", "--config", str(config)]
    waiting = await asyncio.create_subprocess_exec(
        *verb, "rerun", "rollup", "--wait", "--timeout", "600",
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        request = await wait_for(
            lambda: fetchval(dsn, "SELECT id FROM pipectl.requests"), timeout=60, interval=0.1
        )
        postmaster = int((own_postgres.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signum)
        _, stderr = await asyncio.wait_for(waiting.communicate(), 120)
    finally:
        if waiting.returncode is None:
            waiting.kill()
    err = stderr.decode()
    assert waiting.returncode == 3, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pipectl: request {request} was filed, but the connection")
    assert "see pipectl status" in lines[0]
    # Any other verb against the server that is gone: the documented 3, one line.
    done = await asyncio.to_thread(
        subprocess.run, [*verb, "status"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.CrashShutdownError("terminating connection because of crash"), True),
        (asyncpg.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.InterfaceError("connection is closed"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (asyncpg.UniqueViolationError("duplicate key value"), False),
        (asyncpg.LockNotAvailableError("canceling statement due to lock timeout"), False),
        (asyncpg.InterfaceError("cannot perform operation: another operation"), False),
        (ValueError("not a connection problem"), False),
    ],
)
def test_which_errors_mean_the_connection_was_lost(error: BaseException, lost: bool) -> None:
    """main() answers these with exit 3 and one line, whatever the verb; the others keep
    their meaning (a database error is 2, a bug is a bug)."""
    assert connection_lost(error) is lost
    wrapped = RuntimeError("while closing")
    wrapped.__cause__ = error
    assert connection_lost(wrapped) is lost
