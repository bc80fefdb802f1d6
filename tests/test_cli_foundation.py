"""`pipectl config` and `pipectl db` as a user runs them: output, exit codes, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from pipectl.cli import main

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_config_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["config", "check", "--config", str(REPO / "config.example.toml")], capsys)
    assert code == 0
    assert "ok (2 steps, 26 checks)" in out


def test_config_check_reports_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nheartbeat = "5 minutez"\nlost_after = "3"\n')
    code, out, err = run(["--config", str(bad), "config", "check"], capsys)
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:2: agent.heartbeat: unknown unit 'minutez' in duration '5 minutez'; "
        "use ms, s, m, h, d or w",
        f"{bad}:3: agent.lost_after: expected a whole number, got text '3'",
    ]


def test_config_show_masks_secrets_and_names_origins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "p.toml"
    config.write_text('[redis]\nurl = "redis://:hunter2@127.0.0.1:6379/0"\n')
    monkeypatch.setenv("PIPECTL_DATABASE_URL", "postgresql://agent:s3cret@db/apes")
    code, out, _ = run(["config", "show", "--config", str(config)], capsys)
    assert code == 0
    assert "hunter2" not in out
    assert "s3cret" not in out
    assert "postgresql://agent:****@db/apes" in out
    assert "env PIPECTL_DATABASE_URL" in out
    assert f"{config}:2" in out


async def test_db_upgrade_and_status(empty_database: str) -> None:
    env = {"PIPECTL_DATABASE_URL": empty_database}
    status = _pipectl(["db", "status"], env)
    assert status.returncode == 1  # pending migrations
    assert "pending" in status.stdout
    upgrade = _pipectl(["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "applied 0001_core.sql" in upgrade.stdout
    again = _pipectl(["db", "upgrade"], env)
    assert "schema is up to date" in again.stdout
    status = _pipectl(["db", "status"], env)
    assert status.returncode == 0
    assert "database at version" in status.stdout
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            "INSERT INTO pipectl.schema_migrations (version, name, checksum) VALUES (999, 'x', 'y')"
        )
    finally:
        await conn.close()
    newer = _pipectl(["db", "upgrade"], env)
    assert newer.returncode == 2
    assert "newer than this pipectl" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_unreachable_database_is_a_message_not_a_traceback() -> None:
    result = _pipectl(["status"], {"PIPECTL_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none"})
    assert result.returncode == 3
    assert result.stderr.startswith(
        "pipectl: cannot connect to postgresql://nobody@127.0.0.1:9/none: connection refused"
    )
    assert "Traceback" not in result.stderr


def test_schema_missing_is_explained(empty_database: str) -> None:
    result = _pipectl(["history"], {"PIPECTL_DATABASE_URL": empty_database})
    assert result.returncode == 2
    assert "run `pipectl db upgrade`" in result.stderr


def _pipectl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "pipectl", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


async def test_db_apes_loads_the_preset_sql(empty_database: str) -> None:
    env = {"PIPECTL_DATABASE_URL": empty_database}
    assert _pipectl(["db", "apes"], env).returncode == 2  # nothing asked
    base = _pipectl(["db", "apes", "--base"], env)
    assert base.returncode == 0, base.stderr
    again = _pipectl(["db", "apes", "--base"], env)
    assert again.returncode == 2
    assert again.stderr.startswith("pipectl: sql/apes/schema.sql failed: relation")
    assert "Traceback" not in again.stderr
    assert _pipectl(["db", "upgrade"], env).returncode == 0
    rest = _pipectl(["db", "apes", "--materialized", "--indexes"], env)
    assert rest.returncode == 0, rest.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('idx_sessions_created_at') IS NOT NULL")
        kind = await conn.fetchval(
            "SELECT relkind FROM pg_class WHERE relname = 'user_satisfaction_summary'"
        )
        assert kind == b"m"
    finally:
        await conn.close()
