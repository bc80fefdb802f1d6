"""bench/ cannot rot: its cheapest functions run on tiny sizes and report the right shape.

Structure only, never timings (timing targets are figures in bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bench import (
    cli_start,
    console_queries,
    detector,
    gates,
    generate,
    incremental_refresh,
    partitions,
    read_amplification,
    scrape,
    shapes,
    verification,
)
from bench.__main__ import render, summary
from bench.common import Figure, Section, fill_rule_performance
from pipectl.config import parse_config_text
from tests.conftest import PgServer


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_generator_fills_the_layout_with_the_upstream_indexes(database: str) -> None:
    indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'"
    before = await _count(database, indexes)
    counts = await generate.generate(database, 2_000, days=3)
    assert set(counts) == set(generate.TABLES)
    assert counts["rule_performance"] == 2_000
    for table, count in counts.items():
        assert await _count(database, f"SELECT count(*) FROM public.{table}") == count
    assert await _count(database, indexes) == before
    late = (
        "SELECT count(*) FROM public.rule_performance WHERE created_at > now() AT TIME ZONE 'UTC'"
    )
    assert await _count(database, late) == 0

    conn = await asyncpg.connect(database)
    try:
        now = datetime.now(UTC)
        await generate.append_rule_performance(conn, 100, now - timedelta(minutes=1), now)
    finally:
        await conn.close()
    assert await _count(database, "SELECT count(*) FROM public.rule_performance") == 2_100


async def test_verification_sections(database: str) -> None:
    await generate.generate(database, 3_000, days=3, tables=("rule_performance",))
    full = await verification.full_verification(database, 1, None)
    assert full.figures[0].name.startswith("floor")
    assert any(f.target == "<= 1.2x floor" for f in full.figures)
    assert [row[0] for row in full.tables[0][2]] == [
        c.name for c in verification.pipectl_config().checks
    ]
    cycles = await verification.continuous(database, 1, None)
    assert cycles.figures[0].name.startswith("pipectl incremental")
    fresh = await verification.freshness_scaling(database, database, 3)
    assert fresh.figures[-1].target == "<= 1.5"


async def test_shape_sections(database: str, tmp_path: Path) -> None:
    await generate.generate(database, 3_000, days=3, tables=("rule_performance",))
    for shape in shapes.SHAPES:
        section = await shapes.full_shape(database, shape, 1, tmp_path, soda_in_process=False)
        names = [f.name for f in section.figures]
        # The floor as a psql process, next to the floor, when psql is installed.
        assert ("floor as a psql process" in names) == (shutil.which("psql") is not None)
        ours = [name for name in names if name != "floor as a psql process"]
        assert ours[:3] == ["floor: one SELECT, count(DISTINCT key)", "pipectl in-process",
                            "pipectl check"]  # fmt: skip
        assert names[-1] == "duplicate probe alone, plan chosen now"
        assert "pipectl check, no bytecode cache" in names
    cycles = await shapes.continuous(database, 1, tmp_path, with_index=True)
    assert cycles.figures[0].name == "pipectl check, new rows (process)"
    assert "made for the bench" in cycles.notes[0]
    assert "duplicate probe alone, lookups per new key" in [f.name for f in cycles.figures]


@pytest.mark.skipif(importlib.util.find_spec("soda_core") is None, reason="soda-core not installed")
async def test_soda_harness_answers_the_same_checks(database: str, tmp_path: object) -> None:
    await generate.generate(database, 2_000, days=3, tables=("rule_performance",))
    with verification.soda_harness(database) as (soda, label):
        assert soda is not None, label
        found = soda.run()
    assert set(found.answers) == {"row_count", "freshness", "duplicate", "missing", "invalid"}
    assert found.answers["row_count"] == 2_000


async def test_console_queries_report_every_query(database: str) -> None:
    counts = await console_queries.fill_history(database, 2_000, 5_000)
    times, select1 = await console_queries.measure(database, 2)
    section = console_queries.report(counts, times, select1)
    names = [row[0] for row in section.tables[0][2]]
    assert names == list(console_queries.queries())
    assert all(len(values) == 2 for values in times.values())


async def test_gates_bench_times_both_refreshes(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await fill_rule_performance(conn, 2_000)
        bare, full, inside, passed = await gates.measure(conn, 2)
    finally:
        await conn.close()
    assert len(bare) == len(full) == len(inside) == 2
    assert all(0 <= g <= f for g, f in zip(inside, full, strict=True))
    assert passed


async def test_partitions_bench_measures_every_probe_on_each_layout(pg_server: PgServer) -> None:
    """A tiny run: every probe on the plain table and both partitioned layouts, and the
    scratch database is gone afterwards."""
    scratch = f"{partitions.SCRATCH}_{uuid.uuid4().hex[:8]}"
    section = await partitions.run(pg_server.dsn, 2_000, 1, scratch)
    rows = section.tables[0][2]
    assert [(row[0], row[1]) for row in rows] == [
        (probe, table)
        for table in ("rp_plain", *partitions.PARTITIONED)
        for probe in ("freshness max(created_at)", "volume, 1 h window", "quality, 24 h window")
    ]
    assert all(int(row[4]) >= 1 for row in rows)
    gone = f"SELECT count(*) FROM pg_database WHERE datname = '{scratch}'"
    assert await _count(pg_server.dsn, gone) == 0


async def test_incremental_bench_refreshes_both_ways_and_audits(database: str) -> None:
    conn = await asyncpg.connect(database, server_settings={"TimeZone": "UTC"})
    try:
        await incremental_refresh.setup(conn, 2_000, incremental_refresh.bench_step())
        found, cross = await incremental_refresh.measure(conn, 2_000, 2)
    finally:
        await conn.close()
    assert [r.arrived for r in found] == [20, 20]
    assert [r.audit_differing for r in found] == [0, 0]
    assert cross == 0
    assert all(r.gates_passed for r in found)
    assert all(r.matview.rows_read >= 2_000 for r in found)
    assert all(20 <= r.incremental.rows_read < r.matview.rows_read for r in found)
    section = incremental_refresh.report(2_000, found, cross)
    assert [(f.name, f.target) for f in section.figures] == [
        ("incremental refresh, median wall time", ">= 50x cheaper"),
        ("rows read per refresh, median", ""),
        ("gates on the incremental refresh, median", ""),
        ("content: rows differing from the defining query", "0"),
    ]
    assert section.figures[-1].value == "0"


async def test_incremental_bench_reports_trigger_ratios_and_both_refreshes(
    database: str,
) -> None:
    from bench import incremental

    conn = await asyncpg.connect(database)
    try:
        await fill_rule_performance(conn, 2_000)
    finally:
        await conn.close()
    section = await incremental.measure(database, 20, 0.05)
    assert [f.name for f in section.figures] == [
        "single-row INSERT with triggers",
        "UPDATE of 5 rows behind the watermark with triggers",
        "incremental refresh (median of 3)",
    ]
    assert all(f.baseline for f in section.figures)
    assert "ratio" in section.figures[0].note


def test_scrape_serves_every_metric() -> None:
    section = scrape.run(3)
    assert [f.name for f in section.figures][:2] == [
        "scrape p95, agent idle",
        "scrape p95, agent's main thread busy",
    ]
    assert section.figures[0].target == "<= 5 ms"


def test_detector_scores_are_fractions() -> None:
    series = detector.synthetic(1, weeks=6, warmup_weeks=2)
    result = detector.score(series, detector.rolling_zscore(7 * 24)(series))
    assert 0.0 <= result.precision <= 1.0
    assert 0.0 <= result.recall <= 1.0


def test_report_renders_markdown() -> None:
    section = Section("x", [Figure("f", "1 ms", "<= 2 ms", "0.5 ms")], ["a note"])
    text = render("python -m bench all", [("CPU", "c")], [("load", "0")], [section], True)
    assert "| f | 1 ms | <= 2 ms | 0.5 ms |" in text
    assert "## Summary" in text
    assert summary([section]).tables[0][2] == [["x", "f", "1 ms", "<= 2 ms", "0.5 ms"]]


async def test_cli_start_times_each_verb_beside_its_baselines(database: str) -> None:
    """One round against a real agent: every command ran (no failed run), the three verbs
    carry the 0.3 s target and the console 0.5 s, and `--help` loads no heavy package."""
    section = await cli_start.measure(database, 1)
    assert [(f.name, f.target) for f in section.figures] == [
        ("pipectl --help: first output", "<= 0.3 s"),
        ("pipectl status: first output", "<= 0.3 s"),
        ("pipectl rerun --wait: first output", "<= 0.3 s"),
        ("console: first data", "<= 0.5 s"),
    ]
    assert all("import asyncpg" in f.baseline for f in section.figures)
    rows = {row[0]: row for row in section.tables[0][2]}
    assert all(row[-1] == "0" for row in rows.values()), rows
    assert rows["pipectl --help"][5] == "none"
    assert rows["pipectl status"][5] == "asyncpg, rich"  # the config known valid
    assert "pydantic" in rows["pipectl status, config not known (validated)"][5]


async def test_read_amplification_runs_both_sides_beside_a_control(
    pg_server: PgServer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A few seconds of the simulator with an agent per side: the figures and the per-table
    breakdown come out, on databases of their own (dropped afterwards). Bounded below
    pytest's timeout, so that a slow run is cancelled (its simulators and agents stopped)
    and says which phase it was in, rather than leaking its tasks into the session."""
    monkeypatch.setenv("PIPECTL_BENCH_DSN", pg_server.dsn)
    monkeypatch.setenv("PIPECTL_BENCH_REDIS_URL", redis_url)
    caplog.set_level(logging.INFO, logger=read_amplification.log.name)
    try:
        section = await asyncio.wait_for(read_amplification.run(0.4, 0.1, days=0), 240)
    except TimeoutError:
        phases = [r.getMessage() for r in caplog.records if r.name == read_amplification.log.name]
        pytest.fail(f"over 240 s (about 30 s on a quiet machine); its phases: {phases}")
    assert [(f.name, f.target) for f in section.figures] == [
        ("incremental checks, steady (rows read / row written)", "<= 2"),
        ("incremental checks, whole run from the agent's start", ""),
    ]
    assert "(incremental = false)" in section.figures[0].baseline
    _title, header, rows = section.tables[0]
    assert header == ["table", "control", "before", "after"]
    assert "rule_performance" in [row[0] for row in rows]
    for incremental in (False, True):
        loaded = parse_config_text(read_amplification.agent_config(incremental), environ={})
        assert loaded.config.check_defaults.incremental is incremental
        assert loaded.config.steps
        assert not any(step.enabled for step in loaded.config.steps)
