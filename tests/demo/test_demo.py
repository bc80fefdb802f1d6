"""`pipectl demo --headless`: the whole product end to end on embedded servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

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
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipectl",
            "demo",
            "--headless",
            "--duration",
            "25",
            "--backfill-days",
            "3",
            "--seed",
            "7",
            "--state-dir",
            str(state),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
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
    assert "backfilling" in result.stderr or "rows of 3-day history" in result.stderr
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
