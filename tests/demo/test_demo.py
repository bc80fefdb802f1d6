"""`pipectl demo --headless`: the whole product end to end on embedded servers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from pipectl.cli.demo import PACE

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _servers_under(state: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(state) in cmdline:
            found.append(process)
    return found


def test_headless_demo_refreshes_checks_and_reports(tmp_path: Path) -> None:
    state = tmp_path / "state"
    report, err = _headless(state, 25, backfill_days=3)
    steps = {s["name"]: s for s in report["steps"]}
    assert set(steps) == {"rule_effectiveness_summary", "user_satisfaction_summary"}
    assert report["runs"]["rule_effectiveness_summary"]["succeeded"] >= 1
    # The report is taken while the agent runs: a refresh may be in progress at that instant
    # (CI saw it once); what must hold is that the step is healthy and has succeeded.
    assert steps["rule_effectiveness_summary"]["status"] in ("ok", "running")
    assert steps["rule_effectiveness_summary"]["last_success_at"] is not None
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["rule_performance_freshness"]["status"] == "ok"
    assert checks["rule_performance_freshness"]["value"] < 900  # warn_after: 15m
    assert report["check_results"] >= 10
    assert [a["name"] for a in report["agents"]] == ["demo-agent"]
    assert "backfilling" in err or "rows of 3-day history" in err
    assert _servers_under(state) == [], "no server may outlive the demo"


def _headless(
    state: Path, seconds: int, *extra: str, backfill_days: int = 1
) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipectl",
            "demo",
            "--headless",
            "--duration",
            str(seconds),
            "--backfill-days",
            str(backfill_days),
            "--seed",
            "7",
            "--state-dir",
            str(state),
            "--json",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def test_incremental_demo_refreshes_both_summaries_and_goes_back(tmp_path: Path) -> None:
    """`--incremental`: both summaries are the preset's incremental steps, installed with
    their triggers, refreshed and gated by the agent; the next run without it puts the
    materialized views back and refreshes them."""
    state = tmp_path / "state"
    report, err = _headless(state, 25, "--incremental")
    for summary in ("rule_effectiveness_summary", "user_satisfaction_summary"):
        assert f"public.{summary}: an incremental summary, with its invalidation triggers" in err
    runs = report["runs"]
    # The rule summary refreshes within the run; the satisfaction summary waits for it and
    # runs on a longer schedule, so on a loaded machine it may not have run yet: when it has,
    # it did not fail.
    assert runs["rule_effectiveness_summary"]["succeeded"] >= 1, runs
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["user_satisfaction_summary"]["status"] not in ("failing", "failed", "held")
    step = steps["rule_effectiveness_summary"]
    assert step["kind"] == "incremental"
    assert step["status"] in ("ok", "running"), step  # running: caught mid-refresh
    first = runs["rule_effectiveness_summary"]

    report, err = _headless(state, 25)
    assert "public.rule_effectiveness_summary: back to a materialized view" in err
    again = report["runs"]["rule_effectiveness_summary"]
    assert again["succeeded"] > first["succeeded"], (first, again)
    step = next(s for s in report["steps"] if s["name"] == "rule_effectiveness_summary")
    assert step["kind"] == "matview"
    assert step["status"] in ("ok", "running"), step
    assert _servers_under(state) == [], "no server may outlive the demo"


def test_second_run_reuses_the_state_and_fresh_resets_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = [
        sys.executable,
        "-m",
        "pipectl",
        "demo",
        "--headless",
        "--duration",
        "3",
        "--backfill-days",
        "1",
        "--state-dir",
        str(state),
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "rows of 1-day history" in first.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "history already present" in again.stdout
    fresh = subprocess.run(
        [*command, "--fresh"], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "rows of 1-day history" in fresh.stdout
    assert _servers_under(state) == []


# --------------------------------------------------------------------------------------------
# The demo's pace and thresholds (issue 14 §2 and §5)

HOUR_AT_DEMO_PACE_S = 3600 / PACE  # APES's weekday-peak hour, at the demo's pace


def _demo_command(state: Path, *extra: str, days: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipectl",
        "demo",
        "--headless",
        "--backfill-days",
        str(days),
        "--state-dir",
        str(state),
        *extra,
    ]


# Rich wraps long lines at the terminal width: the DSN must stay on one line.
_ENV = {**os.environ, "COLUMNS": "400"}


@pytest.mark.demo_long
@pytest.mark.timeout(900)
def test_a_healthy_demo_hour_shows_no_warn_or_fail(tmp_path: Path) -> None:
    """An hour of APES at the demo's pace (after its warm-up): not one check's shown status
    turns warn, fail or error, the buffer-cache check included. With the demo's 30 days of
    history, as the issue saw it: rule_performance is then bigger than a quarter of the
    embedded server's shared_buffers, so every scan of it reads through a small ring of
    buffers, which is what pulled the ratio down when pipectl judged its own scans."""
    result = subprocess.run(
        [
            *_demo_command(tmp_path / "state", "--seed", "11", "--json", days=30),
            "--duration",
            str(HOUR_AT_DEMO_PACE_S),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    start = "\n".join(line for line in result.stderr.splitlines() if "warm-up" in line)
    # What turned non-ok, when and on which value (the messages carry the values).
    assert report["alerts"] == [], f"{start}\n" + "\n".join(
        f"{a['at']} {a['check']} -> {a['to']}: {a['message']}" for a in report["alerts"]
    )
    shown = {c["name"]: c for c in report["checks"]}
    not_ok = [c for c in shown.values() if c["status"] not in ("ok", "nodata")]
    assert not_ok == [], "\n".join(
        f"{c['name']} {c['status']} (value {c.get('value')}): {c.get('message')}" for c in not_ok
    )
    assert report["check_results"] >= 100
    assert shown["schema_version"]["status"] == "ok"
    assert "warm-up done" in result.stderr or "warm-up ended" in result.stderr


@dataclass(frozen=True)
class Signature:
    """Where a fault shows in the console: a check's shown status (or, for `lock`, the
    summary's refresh runs failing; for `broken_input`, its gates holding them)."""

    check: str | None = None
    step: str | None = None
    run_status: str = "failed"


SIGNATURES = {
    "stall": Signature(check="user_feedback_freshness"),
    "spike": Signature(check="rule_performance_volume"),
    "out_of_range": Signature(check="rule_ids_known"),
    "nulls": Signature(check="confidence_level_present"),
    "cache_miss_storm": Signature(check="redis_hit_ratio"),
    "deploy": Signature(check="schema_version"),
    "lock": Signature(step="rule_effectiveness_summary"),
    "drop": Signature(check="rule_performance_volume"),
    "broken_input": Signature(step="rule_effectiveness_summary", run_status="held"),
}
# Faults of one round show on different checks, so they run at the same time; a spike and a
# drop would cancel out, so the drop has a round of its own; a broken input holds the refresh
# that the lock makes fail, and drops rule_performance's volume: a round of its own too.
ROUNDS = [[f for f in SIGNATURES if f not in ("drop", "broken_input")], ["drop"], ["broken_input"]]
FAULT_FOR = timedelta(seconds=45)
# "Within a minute" is what the demo is built for (the report prints what was measured); the
# limits asserted leave room for a slow CI machine running the whole suite.
VISIBLE_WITHIN_S = 150.0
CLEAR_WITHIN_S = 240.0


async def _shows(conn: asyncpg.Pool, signature: Signature, since: datetime) -> bool:
    if signature.check is not None:
        status = await conn.fetchval(
            "SELECT status FROM pipectl.checks WHERE name = $1", signature.check
        )
        return status in ("warn", "fail")
    failed = await conn.fetchval(
        "SELECT count(*) FROM pipectl.runs WHERE step = $1 AND status = $3 AND finished_at > $2",
        signature.step,
        since,
        signature.run_status,
    )
    return bool(failed)


async def _clear(conn: asyncpg.Pool, signature: Signature, since: datetime) -> bool:
    if signature.check is not None:
        status = await conn.fetchval(
            "SELECT status FROM pipectl.checks WHERE name = $1", signature.check
        )
        return bool(status == "ok")
    last = await conn.fetchrow(
        "SELECT status, finished_at FROM pipectl.runs WHERE step = $1"
        " AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
        signature.step,
    )
    return bool(last is not None and last["status"] == "succeeded" and last["finished_at"] > since)


async def _until(probe: Callable[[], Awaitable[bool]], deadline_s: float, what: str) -> float:
    """Seconds until `probe` holds (polled each second), failing after `deadline_s`."""
    started = time.monotonic()
    while not await probe():
        waited = time.monotonic() - started
        if waited > deadline_s:
            raise AssertionError(f"{what}: not within {deadline_s:.0f}s")
        await asyncio.sleep(1)
    return time.monotonic() - started


def _dsn_from(log: Path) -> str | None:
    found = re.search(r"PIPECTL_DATABASE_URL=(\S+)", log.read_text(errors="replace"))
    return found.group(1) if found and "agent running" in log.read_text() else None


async def _wait_all(
    conn: asyncpg.Pool,
    faults: list[str],
    probe: Callable[[asyncpg.Pool, Signature, datetime], Awaitable[bool]],
    since: datetime,
    limit_s: float,
    what: str,
) -> list[float]:
    async def one(fault: str) -> float:
        signature = SIGNATURES[fault]

        async def holds() -> bool:
            return await probe(conn, signature, since)

        return await _until(holds, limit_s, f"{fault} {what}")

    return list(await asyncio.gather(*(one(f) for f in faults)))


async def _drive(dsn: str) -> dict[str, tuple[float, float]]:
    """Each round: its signatures green, its faults injected for FAULT_FOR; seconds until each
    shows, and from the fault's end until it is green again."""
    from pipectl.simulator.control import send_fault

    timings: dict[str, tuple[float, float]] = {}
    conn = await asyncpg.create_pool(dsn, min_size=1, max_size=4)  # the faults are polled at once
    try:
        for faults in ROUNDS:
            await _wait_all(conn, faults, _clear, datetime.now(UTC) - FAULT_FOR, 240, "green")
            since = datetime.now(UTC)
            for fault in faults:
                assert await send_fault(dsn, fault, FAULT_FOR) == 1
            shown = await _wait_all(conn, faults, _shows, since, VISIBLE_WITHIN_S, "visible")
            ended = since + FAULT_FOR
            await asyncio.sleep(max(0.0, (ended - datetime.now(UTC)).total_seconds()))
            cleared = await _wait_all(conn, faults, _clear, ended, CLEAR_WITHIN_S, "cleared")
            timings.update(zip(faults, zip(shown, cleared, strict=True), strict=True))
    finally:
        await conn.close()
    return timings


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.demo_long
@pytest.mark.timeout(1500)
def test_every_fault_shows_in_the_demo_and_clears_after(tmp_path: Path) -> None:
    from pipectl.simulator import FAULTS

    assert set(SIGNATURES) == set(FAULTS), "a new fault needs its signature here"
    err = tmp_path / "demo.err"
    with err.open("w") as stderr:
        demo = subprocess.Popen(
            # --json: the progress lines (and the DSN) go to stderr
            [*_demo_command(tmp_path / "state", "--seed", "5", "--json"), "--duration", "1800"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_ENV,
            # A shell without job control starts background jobs with SIGINT ignored, and
            # the demo would inherit that: its Ctrl+C is how this test stops it.
            preexec_fn=_interruptible,
        )
    try:

        async def started() -> bool:
            assert demo.poll() is None, err.read_text()[-3000:]
            return _dsn_from(err) is not None

        asyncio.run(_until(started, 300, "the demo started"))
        dsn = _dsn_from(err)
        assert dsn is not None
        timings = asyncio.run(_drive(dsn))
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=120)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    print(
        "fault -> visible / end -> ok (s): "
        + ", ".join(f"{f} {a:.0f}/{b:.0f}" for f, (a, b) in timings.items())
    )
    assert set(timings) == set(SIGNATURES)
    assert _servers_under(tmp_path / "state") == [], "no server may outlive the demo"
