"""Faults from another process (NOTIFY on pipectl_demo) and the `pipectl fault` verbs."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pipectl import cli
from pipectl.simulator import CHANNEL, ApesSimulator, FaultError, send_clear, send_fault
from pipectl.simulator.control import ControlError, parse_message
from tests.helpers import wait_for
from tests.simulator.support import running

MALFORMED = (
    "not json",
    "[1, 2]",
    '{"action": "explode"}',
    '{"action": "inject", "fault": "meltdown"}',
    '{"action": "inject", "fault": "stall", "params": {"table": "nope"}}',
    '{"action": "inject", "fault": "spike", "duration_s": -5}',
    '{"action": "inject", "fault": "spike", "params": [1]}',
    '{"action": "clear", "fault": 42}',
)


def test_messages_are_parsed_strictly() -> None:
    message = parse_message(
        '{"action": "inject", "fault": "stall", "duration_s": 120,'
        ' "params": {"table": "user_feedback"}}'
    )
    assert message.action == "inject" and message.fault == "stall"
    assert message.duration == timedelta(seconds=120)
    assert message.params == {"table": "user_feedback"}
    assert parse_message(message.to_json()) == message
    assert parse_message('{"action": "clear", "fault": null}').fault is None
    for payload in MALFORMED:
        with pytest.raises(ControlError):
            parse_message(payload)


async def _listening(sim: ApesSimulator) -> bool:
    return sim.listening


async def test_faults_arrive_over_notify_and_bad_payloads_are_ignored(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipectl.simulator")
    sim = ApesSimulator(database, None, seed=6, rate=50, rhythm=False)
    conn = await asyncpg.connect(database)
    try:
        async with running(sim) as task:
            await wait_for(lambda: _listening(sim), timeout=30)
            for payload in MALFORMED:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
            heard = await send_fault(database, "stall", timedelta(seconds=90), {"table": "all"})
            assert heard == 1

            async def stalled() -> bool:
                return "stall" in sim.active_faults()

            await wait_for(stalled, timeout=30)
            expires = sim.active_faults()["stall"]
            assert expires is not None
            assert timedelta(seconds=60) < expires - datetime.now(UTC) <= timedelta(seconds=90)

            raw = {"action": "inject", "fault": "spike", "duration_s": None, "params": {}}
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps(raw))

            async def spiked() -> bool:
                return sim.active_faults().get("spike", 0) is None

            await wait_for(spiked, timeout=30)
            assert await send_clear(database) == 1

            async def cleared() -> bool:
                return sim.active_faults() == {}

            await wait_for(cleared, timeout=30)
            ticks = sim.stats().ticks

            async def still_running() -> bool:
                return sim.stats().ticks > ticks + 2

            await wait_for(still_running, timeout=30)
            assert not task.done()
    finally:
        await conn.close()
    ignored = [r for r in caplog.records if "ignored control message" in r.getMessage()]
    assert len(ignored) == len(MALFORMED)
    with pytest.raises(FaultError):
        await send_fault(database, "meltdown")
    assert await send_clear(database, "stall") == 0  # nobody listens any more


def _config(tmp_path: Path, dsn: str) -> str:
    path = tmp_path / "pipectl.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n', encoding="utf-8")
    return str(path)


async def test_fault_cli_injects_clears_and_lists(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, database)

    async def pipectl(*args: str) -> int:
        # main() runs its own event loop: give it a thread, as a separate process would.
        return await asyncio.to_thread(cli.main, ["--config", config, *args])

    assert await pipectl("fault", "list") == 0
    listing = capsys.readouterr().out
    for name in ("stall", "spike", "drop", "out_of_range", "nulls", "cache_miss_storm", "deploy"):
        assert name in listing

    assert await pipectl("fault", "inject", "meltdown") == 2
    err = capsys.readouterr().err
    assert "unknown fault 'meltdown'" in err and "valid faults: stall, spike, drop" in err
    assert await pipectl("fault", "clear", "meltdown") == 2
    assert "unknown fault" in capsys.readouterr().err
    assert await pipectl("fault", "inject", "stall", "--factor", "3") == 2
    assert "does not take factor" in capsys.readouterr().err
    assert await pipectl("fault", "inject", "stall", "--for", "soon") == 2
    assert "--for" in capsys.readouterr().err

    # Nobody listening yet: sent, with a warning (exit 1).
    assert await pipectl("fault", "inject", "drop") == 1
    assert "no simulator is listening" in capsys.readouterr().err

    sim = ApesSimulator(database, None, rate=10, rhythm=False)
    async with running(sim):
        await wait_for(lambda: _listening(sim), timeout=30)
        stall = ("fault", "inject", "stall", "--for", "2m", "--table", "rule_performance")
        assert await pipectl(*stall) == 0
        assert "inject stall (table=rule_performance) for 2m" in capsys.readouterr().out
        assert await pipectl("fault", "inject", "spike", "--factor", "5") == 0
        lock = ("fault", "inject", "lock", "--relation", "public.user_satisfaction_summary")
        assert await pipectl(*lock) == 0

        async def three() -> bool:
            return set(sim.active_faults()) == {"stall", "spike", "lock"}

        await wait_for(three, timeout=30)
        assert await pipectl("fault", "clear", "spike") == 0

        async def two() -> bool:
            return set(sim.active_faults()) == {"stall", "lock"}

        await wait_for(two, timeout=30)
        assert await pipectl("fault", "clear") == 0

        async def none() -> bool:
            return sim.active_faults() == {}

        await wait_for(none, timeout=30)
        assert "clear all faults: sent to 1" in capsys.readouterr().out
