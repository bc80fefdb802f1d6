"""The demo shows live data at once: history loads in a child process behind the console,
its progress in the header; `pipectl demo --print-env` tells a second terminal where the
demo's servers are."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from pipectl.cli.demo import DemoStatus, database_location, history_in_background
from pipectl.embedded import free_port
from pipectl.simulator import ApesSimulator
from pipectl.simulator.history_process import HistoryLoad
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]


def _print_env(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipectl", "demo", "--print-env", "--state-dir", str(state)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_print_env_gives_the_exports_a_second_terminal_needs(tmp_path: Path) -> None:
    missing = _print_env(tmp_path / "none")
    assert missing.returncode == 2 and "no demo state in" in missing.stderr
    state = tmp_path / "state"
    (state / "postgres").mkdir(parents=True)
    (state / "valkey").mkdir()
    pg_port, valkey_port = free_port(), free_port()
    (state / "postgres" / "port").write_text(str(pg_port))
    (state / "valkey" / "port").write_text(str(valkey_port))
    done = _print_env(state)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"export PIPECTL_DATABASE_URL=postgresql://postgres@127.0.0.1:{pg_port}/apes",
        f"export PIPECTL_REDIS_URL=redis://127.0.0.1:{valkey_port}/0",
    ]
    assert "is not running" in done.stderr  # nothing listens on that port
    shell = subprocess.run(
        ["bash", "-c", f'eval "{done.stdout}"; echo "$PIPECTL_DATABASE_URL $PIPECTL_REDIS_URL"'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shell.stdout.split() == [
        f"postgresql://postgres@127.0.0.1:{pg_port}/apes",
        f"redis://127.0.0.1:{valkey_port}/0",
    ]


def test_database_location_names_host_port_and_database() -> None:
    assert database_location("postgresql://u:secret@127.0.0.1:54321/apes") == "127.0.0.1:54321/apes"
    assert database_location("postgresql://db.example/apes") == "db.example/apes"


async def test_history_loads_in_a_child_process_with_progress(database: str) -> None:
    await ApesSimulator(database, None, seed=2).setup()
    progress: list[tuple[int, int]] = []
    load = HistoryLoad(database, 1, seed=2, progress=lambda d, t: progress.append((d, t)))
    report = await load.run()
    conn = await asyncpg.connect(database)
    try:
        written = await conn.fetchval("SELECT count(*) FROM rule_performance")
    finally:
        await conn.close()
    assert not report.skipped and report.rows["rule_performance"] == written > 0
    assert progress[0][0] == 0 and progress[-1][0] == progress[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(progress))
    again = await HistoryLoad(database, 1).run()
    assert again.skipped and again.reason == "history already present"


async def test_stopping_the_history_load_writes_nothing(database: str) -> None:
    await ApesSimulator(database, None, seed=4).setup()
    started = asyncio.Event()
    load = HistoryLoad(database, 20, seed=4, progress=lambda done, total: started.set())
    task = asyncio.create_task(load.run())
    await asyncio.wait_for(started.wait(), 120)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert load._process is not None and load._process.returncode is not None
    conn = await asyncpg.connect(database)
    try:  # one transaction: rolled back with the child
        assert await conn.fetchval("SELECT count(*) FROM rule_performance") == 0
    finally:
        await conn.close()


async def test_the_header_line_follows_the_history_load(database: str) -> None:
    simulator = ApesSimulator(database, None, seed=5)
    await simulator.setup()
    status = DemoStatus(where="127.0.0.1:5432/apes")
    lines: list[str] = []
    status.listeners.append(lines.append)
    settled = asyncio.Event()
    await history_in_background(simulator, 1, 5, status, settled)
    assert settled.is_set()
    assert lines[0] == "127.0.0.1:5432/apes · loading 1-day history"
    assert any(line.endswith("loading 1-day history 100%") for line in lines)
    assert any("settling" in line for line in lines)
    assert lines[-1] == "127.0.0.1:5432/apes"
    status.update(agent="agent starts judging in 30s (warm-up)")
    assert lines[-1] == "127.0.0.1:5432/apes · agent starts judging in 30s (warm-up)"

    async def loaded() -> bool:
        conn = await asyncpg.connect(database)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM rule_performance"))
        finally:
            await conn.close()

    assert await wait_for(loaded)


BUFFER_CHECK = """
[[checks]]
name = "pg_buffers"
kind = "cache"
source = "postgres"
every = "1s"
"""


async def test_buffer_checks_are_silenced_while_the_history_loads(database: str) -> None:
    from pipectl.cli.demo import HISTORY_SILENCE_REASON, _silence_while_loading
    from tests.helpers import make_loaded

    loaded = make_loaded(database, None, BUFFER_CHECK)
    conn = await asyncpg.connect(database)

    async def filed() -> list[tuple[str, str, str]]:
        rows = await conn.fetch("SELECT kind, target, reason FROM pipectl.requests ORDER BY id")
        return [tuple(r) for r in rows]

    try:
        agent_started, settled = asyncio.Event(), asyncio.Event()
        agent_started.set()
        task = asyncio.create_task(_silence_while_loading(database, loaded, agent_started, settled))
        assert await wait_for(filed) == [("silence", "pg_buffers", HISTORY_SILENCE_REASON)]
        args = await conn.fetchval("SELECT args FROM pipectl.requests")
        assert '"seconds"' in args
        settled.set()
        await asyncio.wait_for(task, 30)
        assert (await filed())[1:] == [("unsilence", "pg_buffers", "pipectl demo: history loaded")]
        # A load that settled before the agent started silences nothing.
        await conn.execute("DELETE FROM pipectl.requests")
        await _silence_while_loading(database, loaded, agent_started, settled)
        assert await filed() == []
        # A demo quit mid-load leaves no silence behind.
        task = asyncio.create_task(
            _silence_while_loading(database, loaded, agent_started, asyncio.Event())
        )
        await wait_for(filed)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [kind for kind, _, _ in await filed()] == ["silence", "unsilence"]
        assert "stopped" in (await filed())[1][2]
    finally:
        await conn.close()


async def test_the_console_opens_first_and_the_history_loads_behind_it(tmp_path: Path) -> None:
    """The whole interactive start on embedded servers, the console replaced by an opener
    that watches the header line: it is open while the history loads, the history arrives,
    the agent starts."""
    import io
    import logging

    from rich.console import Console

    from pipectl.cli.demo import DemoOptions, run_demo
    from pipectl.embedded import EmbeddedServers

    state = tmp_path / "state"
    servers = EmbeddedServers(state)
    seen: dict[str, object] = {}

    async def opener(loaded: object, status: DemoStatus) -> None:
        lines: list[str] = []
        status.listeners.append(lines.append)
        seen["at_open"] = status.line()
        dsn = loaded.config.database.dsn  # type: ignore[attr-defined]
        conn = await asyncpg.connect(dsn)
        try:

            async def loaded_and_judging() -> bool:
                history = await conn.fetchval(
                    "SELECT count(*) FROM rule_performance"
                    " WHERE created_at < (now() AT TIME ZONE 'UTC') - interval '2 hours'"
                )
                agents = await conn.fetchval(
                    "SELECT count(*) FROM pipectl.agents WHERE stopped_at IS NULL"
                )
                return bool(history) and bool(agents) and not status.history

            await wait_for(loaded_and_judging, timeout=240, interval=0.2)
        finally:
            await conn.close()
        seen["lines"] = list(lines)

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with servers.running():
            options = DemoOptions(state_dir=state, backfill_days=1, warmup=0, seed=1)
            code = await run_demo(options, servers, Console(file=io.StringIO()), opener)
            port = servers.postgres.port
    finally:  # the demo sends its logs to a file: give pytest its handlers back
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert code == 0
    assert seen["at_open"] == f"127.0.0.1:{port}/apes"
    lines = seen["lines"]
    assert isinstance(lines, list)
    assert f"127.0.0.1:{port}/apes · loading 1-day history" in lines
    assert lines[-1] == f"127.0.0.1:{port}/apes"
