"""Check suite against Soda Core 4 and against a single pass, on the same data in the same run.

    python -m bench.verification [--rows 10000000] [--small 100000] [--repeats 3] [--cycles 5]

One generated APES database (bench.generate, rule_performance only) is verified by pipectl's
check engine (as `pipectl check` runs it: a fresh engine, catalog validation, each probe in its
read-only transaction, the row checks of one scope sharing one scan, results recorded) and
by Soda Core 4 (`verify_contract_locally` with
one contract holding the same five checks): freshness of created_at, row count, missing
confidence_level, execution_time_ms outside 0..600000, duplicate (prompt_id, rule_id).

- (a) full verification of the whole table, against the floor: one sequential pass over it
  (`count(*)` with index scans disabled, so PostgreSQL reads every heap page; parallel workers
  as the server allows). Interleaved floor / pipectl / Soda, after a warm-up pass, so all three
  read a warm cache under the same load.
- (b) continuous checking: each cycle appends 1 % new rows (dated between the previous cycle
  and now, indexes in place, as live traffic arrives), then pipectl checks only the new rows
  (windowed probes, index-backed freshness) and Soda re-verifies the table. For reference, Soda
  with a contract `filter` on created_at (its own incremental mode) is timed too.
- freshness cost against table size: the freshness check (engine.run, one long-lived engine as
  in the agent) on a small and a large table, interleaved.

Figures, never pass/fail. Soda's telemetry is off (SODA_CORE_TELEMETRY_ENABLED=false).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.common import (
    Database,
    Figure,
    Section,
    load_average,
    ms,
    percentile,
    shared_servers,
    spread,
)
from bench.generate import append_rule_performance, generate, progress_bar
from pipectl import db as pipectl_db
from pipectl import store
from pipectl.checks.engine import CheckEngine
from pipectl.config import Config
from pipectl.model import CheckResult
from pipectl.store.base import Conn

os.environ.setdefault("SODA_CORE_TELEMETRY_ENABLED", "false")

TABLE = "public.rule_performance"
EXEC_MAX = 600_000
LONG = "30m"  # statement timeout for whole-table probes (the default 10s is for windows)


# --- the check suite, both ways ------------------------------------------------------------


def pipectl_config(window: timedelta | None = None) -> Config:
    """The five checks; with `window`, every probe looks only at rows of the last `window`."""
    scope: dict[str, Any] = (
        {"time_column": "created_at", "window": window} if window is not None else {}
    )
    volume_window = window if window is not None else timedelta(days=36500)
    quality = {"kind": "quality", "table": TABLE, "timeout": LONG, **scope}
    return Config.model_validate(
        {
            "checks": [
                {
                    "name": "rp_freshness",
                    "kind": "freshness",
                    "table": TABLE,
                    "column": "created_at",
                    "warn_after": "15m",
                    "error_after": "1h",
                },
                {
                    "name": "rp_row_count",
                    "kind": "volume",
                    "table": TABLE,
                    "column": "created_at",
                    "window": volume_window,
                    "anomaly": None,
                    "bounds": {"fail_below": 1.0},
                    "timeout": LONG,
                },
                {
                    "name": "rp_confidence_present",
                    "rule": {"type": "not_null", "column": "confidence_level"},
                    **quality,
                },
                {
                    "name": "rp_execution_in_range",
                    "rule": {
                        "type": "range",
                        "column": "execution_time_ms",
                        "min": 0.0,
                        "max": float(EXEC_MAX),
                    },
                    **quality,
                },
                {
                    "name": "rp_no_duplicates",
                    "rule": {"type": "unique", "columns": ["prompt_id", "rule_id"]},
                    **quality,
                },
            ]
        }
    )


@dataclass(frozen=True)
class Verification:
    total_ms: float
    per_check_ms: dict[str, float]
    answers: dict[str, float | None]


async def verify(
    pool: asyncpg.Pool,
    config: Config,
    *,
    now: datetime | None = None,
    publish: bool = True,
) -> Verification:
    """Validate, run and record the checks on `pool` (publishing first), as `pipectl check`
    and an agent tick do: the row checks of one table and window share one scan, and the
    other probes run at the same time, each on its own connection."""
    started = time.perf_counter()
    engine = CheckEngine(config)
    async with pool.acquire() as conn:
        if publish:
            await store.publish_checks(conn, engine.definitions(), None)
        await engine.validate(conn)

    async def record(conn: Conn, result: CheckResult) -> None:
        await store.record_result(conn, result, hysteresis=1, agent_id=None, trigger="cli")

    names = [check.name for check in config.checks]
    found = await engine.run_all(names, pool, redis=None, trigger="cli", now=now, record=record)
    per_check: dict[str, float] = {}
    answers: dict[str, float | None] = {}
    for name, result in found.items():
        if result.status == "error":
            raise RuntimeError(f"{name}: {result.message}")
        per_check[name] = result.duration_ms or 0.0
        answers[name] = result.value
    return Verification((time.perf_counter() - started) * 1000, per_check, answers)


async def run_pipectl(dsn: str, config: Config, now: datetime | None = None) -> Verification:
    """What `pipectl check` does: connect, publish, validate, run and record the checks."""
    started = time.perf_counter()
    pool = await checks_pool(config, dsn, warm=False)
    try:
        found = await verify(pool, config, now=now)
    finally:
        await pool.close()
    return Verification((time.perf_counter() - started) * 1000, found.per_check_ms, found.answers)


async def checks_pool(config: Config, dsn: str, *, warm: bool) -> asyncpg.Pool:
    """Connections for the probes, as many as `pipectl check` and the agent use; `warm`
    opens them all first (an agent's steady state)."""
    size = config.agent.max_parallel_checks
    return await pipectl_db.create_pool(
        config, dsn=dsn, min_size=size if warm else 0, max_size=size, application_name="bench"
    )


def soda_version() -> str | None:
    try:
        from soda_core.__version__ import SODA_CORE_VERSION
    except ImportError:
        return None
    return str(SODA_CORE_VERSION)


class Soda:
    """Soda Core 4 contract verification of the same checks (data source + contract files)."""

    def __init__(self, dsn: str, folder: Path) -> None:
        parts = urlsplit(dsn)
        database = parts.path.lstrip("/")
        self.folder = folder
        self.data_source = folder / "data_source.yml"
        self.data_source.write_text(
            "type: postgres\nname: apes\nconnection:\n"
            f"  host: {parts.hostname}\n  port: {parts.port or 5432}\n"
            f"  user: {parts.username or 'postgres'}\n"
            f"  password: {parts.password or 'unused-trust-auth'}\n"
            f"  database: {database}\n"
        )
        self.dataset = f"apes/{database}/public/rule_performance"
        logging.getLogger("soda").setLevel(logging.WARNING)

    def contract(self, since: datetime | None = None) -> Path:
        lines = [f"dataset: {self.dataset}"]
        if since is not None:
            naive = since.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
            lines.append(f"filter: |\n  created_at > '{naive}'")
        lines += [
            "checks:",
            "  - row_count:",
            "  - freshness:",
            "      column: created_at",
            "      threshold:",
            "        unit: hour",
            "        must_be_less_than: 1",
            "  - duplicate:",
            "      columns: [prompt_id, rule_id]",
            "columns:",
            "  - name: confidence_level",
            "    checks:",
            "      - missing:",
            "  - name: execution_time_ms",
            "    checks:",
            "      - invalid:",
            "          valid_min: 0",
            f"          valid_max: {EXEC_MAX}",
        ]
        path = self.folder / ("contract_incremental.yml" if since else "contract.yml")
        path.write_text("\n".join(lines) + "\n")
        return path

    def run(self, since: datetime | None = None) -> Verification:
        from soda_core.contracts import verify_contract_locally

        contract = self.contract(since)
        started = time.perf_counter()
        session = verify_contract_locally(
            data_source_file_path=str(self.data_source), contract_file_path=str(contract)
        )
        total = (time.perf_counter() - started) * 1000
        answers: dict[str, float | None] = {}
        for result in session.contract_verification_results:
            for check in result.check_results:
                values = dict(getattr(check, "diagnostic_metric_values", None) or {})
                kind = str(check.check.type)
                key = {
                    "row_count": "check_rows_tested",
                    "missing": "missing_count",
                    "invalid": "invalid_count",
                    "duplicate": "duplicate_count",
                    "freshness": "freshness_in_hours",
                }.get(kind)
                answers[kind] = values.get(key) if key else None
        if not answers:
            errors = session.get_errors_str() if hasattr(session, "get_errors_str") else ""
            raise RuntimeError(f"Soda returned no check results: {errors}")
        return Verification(total, {}, answers)


# --- the floor -----------------------------------------------------------------------------


async def floor_pass(dsn: str, *, parallel: bool = True) -> float:
    """One sequential pass over every heap page of the table (ms)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SET enable_indexscan = off; SET enable_indexonlyscan = off;"
            " SET enable_bitmapscan = off"
        )
        if not parallel:
            await conn.execute("SET max_parallel_workers_per_gather = 0")
        started = time.perf_counter()
        await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
        return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


async def fused_pass(dsn: str, since: datetime | None = None) -> float:
    """Reference: the count-style checks in one hand-written probe without the duplicate
    check's grouping (over the rows after `since` when given)."""
    conn = await asyncpg.connect(dsn)
    scope = "TRUE" if since is None else "created_at > $1"
    args = [] if since is None else [since.astimezone(UTC).replace(tzinfo=None)]
    try:
        started = time.perf_counter()
        await conn.fetch(  # not fetchrow: its row limit rules out parallel workers
            f"SELECT count(*), count(*) FILTER (WHERE confidence_level IS NULL),"
            f" count(*) FILTER (WHERE execution_time_ms < 0 OR execution_time_ms > {EXEC_MAX}),"
            f" max(created_at) FROM {TABLE} WHERE {scope}",
            *args,
        )
        return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


async def grouped_duplicates(dsn: str) -> float:
    """Reference: the duplicate check alone, as one hand-written grouped pass."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.fetch(  # not fetchrow: its row limit rules out parallel workers
            "SELECT coalesce(sum(n), 0) AS rows_checked,"
            " coalesce(sum(n - 1) FILTER (WHERE present), 0) AS violations"
            " FROM (SELECT count(*) AS n, (prompt_id IS NOT NULL AND rule_id IS NOT NULL)"
            f" AS present FROM {TABLE} GROUP BY prompt_id, rule_id) AS keys"
        )
        return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


async def table_facts(dsn: str) -> tuple[int, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
        size = str(await conn.fetchval(f"SELECT pg_size_pretty(pg_table_size('{TABLE}'))"))
        return rows, size
    finally:
        await conn.close()


# --- (a) full verification -----------------------------------------------------------------


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


async def full_verification(dsn: str, repeats: int, soda: Soda | None) -> Section:
    rows, size = await table_facts(dsn)
    await floor_pass(dsn)  # warm-up: every page read once, hint bits settled
    floors: list[float] = []
    serial: list[float] = []
    fused: list[float] = []
    grouped: list[float] = []
    ours: list[Verification] = []
    theirs: list[Verification] = []
    soda_error = ""
    config = pipectl_config()
    for _ in range(repeats):
        floors.append(await floor_pass(dsn))
        ours.append(await run_pipectl(dsn, config))
        if soda is not None and not soda_error:
            try:
                theirs.append(soda.run())
            except Exception as exc:
                soda_error = f"{type(exc).__name__}: {exc}"
        serial.append(await floor_pass(dsn, parallel=False))
        fused.append(await fused_pass(dsn))
        grouped.append(await grouped_duplicates(dsn))
    # The floor is the faster of the two single passes (parallel workers or one process).
    parallel_floor, serial_floor = statistics.median(floors), statistics.median(serial)
    floor = min(parallel_floor, serial_floor)
    how = "parallel seq scan" if parallel_floor <= serial_floor else "one-process seq scan"
    our = statistics.median(v.total_ms for v in ours)
    figures = [
        Figure(
            "floor: one pass over the table",
            ms(floor),
            "",
            "",
            f"{how}; parallel {spread(floors)}",
        ),
        Figure(
            "pipectl: full verification",
            ms(our),
            "<= 1.2x floor",
            ms(floor),
            f"{_ratio(our, floor)} the floor; {spread([v.total_ms for v in ours])}",
        ),
    ]
    if theirs:
        their = statistics.median(v.total_ms for v in theirs)
        figures += [
            Figure(
                "Soda Core: full verification",
                ms(their),
                "",
                ms(floor),
                f"{_ratio(their, floor)} the floor; {spread([v.total_ms for v in theirs])}",
            ),
            Figure("Soda / pipectl wall time", _ratio(their, our), "> 1x (pipectl ahead)", "", ""),
        ]
    figures += [
        Figure(
            "reference: one-process pass",
            ms(serial_floor),
            "",
            "",
            f"max_parallel_workers_per_gather = 0; {spread(serial)}",
        ),
        Figure(
            "reference: count checks in one probe, no duplicate grouping",
            ms(statistics.median(fused)),
            "",
            ms(floor),
            f"{_ratio(statistics.median(fused), floor)} the floor; hand-written",
        ),
        Figure(
            "reference: duplicate check alone, one grouped pass",
            ms(statistics.median(grouped)),
            "",
            ms(statistics.median(v.per_check_ms["rp_no_duplicates"] for v in ours)),
            "hand-written; baseline: pipectl's duplicate probe",
        ),
    ]
    per_check = [
        [name, ms(statistics.median(v.per_check_ms[name] for v in ours)), _answer(ours[-1], name)]
        for name in ours[-1].per_check_ms
    ]
    notes = [
        f"{rows:,} rows, table {size}; warm cache (a warm-up pass first); {repeats} rounds"
        " interleaved floor / pipectl / Soda.",
        "pipectl: freshness is an index lookup, row count an index-only count, the missing and"
        " range checks share one scan (so they show the same time below), and the duplicate"
        f" check groups all {rows:,} keys on its own. The probes run at the same time, each"
        " on its own connection (agent.max_parallel_checks = 4), so the total is about the"
        " slowest probe plus connecting, publishing, validating and recording.",
    ]
    if theirs:
        notes.append(
            "Soda answers (last run): "
            + ", ".join(f"{k}={v}" for k, v in theirs[-1].answers.items())
            + " (Soda compiles all five checks into one SELECT with COUNT(DISTINCT md5(...)) "
            "for duplicates)."
        )
    if soda_error:
        notes.append(f"Soda failed: {soda_error}")
    return Section(
        "(a) full verification of rule_performance",
        figures,
        notes,
        tables=[("pipectl per check (median)", ["check", "time", "value"], per_check)],
    )


def _answer(v: Verification, name: str) -> str:
    value = v.answers.get(name)
    return "-" if value is None else f"{value:g}"


# --- (b) continuous checking ---------------------------------------------------------------


async def continuous(dsn: str, cycles: int, soda: Soda | None) -> Section:
    rows, _ = await table_facts(dsn)
    new_rows = max(1, rows // 100)
    config = pipectl_config()
    conn = await pipectl_db.connect(config, dsn=dsn)
    previous = await conn.fetchval(f"SELECT max(created_at) FROM {TABLE}")
    await store.publish_checks(conn, CheckEngine(config).definitions(), None)
    pool = await checks_pool(config, dsn, warm=True)
    since = previous.replace(tzinfo=UTC)
    ours: list[Verification] = []
    cli: list[float] = []
    full: list[float] = []
    filtered: list[float] = []
    fused: list[float] = []
    appends: list[float] = []
    soda_error = ""
    try:
        for cycle in range(cycles):
            now = datetime.now(UTC)
            started = time.perf_counter()
            await append_rule_performance(conn, new_rows, since, now, seed=100 + cycle)
            appends.append((time.perf_counter() - started) * 1000)
            windowed = pipectl_config(now - since + timedelta(microseconds=1))
            ours.append(await verify(pool, windowed, now=now, publish=False))
            cli.append((await run_pipectl(dsn, windowed, now=now)).total_ms)
            fused.append(await fused_pass(dsn, since))
            if soda is not None and not soda_error:
                try:
                    full.append(soda.run().total_ms)
                    filtered.append(soda.run(since).total_ms)
                except Exception as exc:
                    soda_error = f"{type(exc).__name__}: {exc}"
            since = now
    finally:
        await pool.close()
        await conn.close()
    our = statistics.median(v.total_ms for v in ours)
    figures = [
        Figure(
            "pipectl incremental cycle (new rows only)",
            ms(our),
            "",
            "",
            spread([v.total_ms for v in ours]),
        ),
        Figure(
            "reference: the same as `pipectl check` (connect, publish)",
            ms(statistics.median(cli)),
            "",
            "",
            spread(cli),
        ),
        Figure(
            "reference: count checks in one windowed probe, no duplicate grouping",
            ms(statistics.median(fused)),
            "",
            "",
            "new rows only; hand-written",
        ),
    ]
    if full:
        their = statistics.median(full)
        figures += [
            Figure("Soda re-verifying the table", ms(their), "", "", spread(full)),
            Figure("Soda / pipectl per cycle", _ratio(their, our), ">= 5x", "", ""),
            Figure(
                "reference: Soda with a contract filter (new rows only)",
                ms(statistics.median(filtered)),
                "",
                ms(our) + " (pipectl)",
                f"{_ratio(statistics.median(filtered), our)} pipectl; {spread(filtered)}",
            ),
        ]
    per_check = [
        [name, ms(statistics.median(v.per_check_ms[name] for v in ours)), _answer(ours[-1], name)]
        for name in ours[-1].per_check_ms
    ]
    notes = [
        f"{cycles} cycles on a table of {rows:,} rows growing by {new_rows:,} rows (1 %) per"
        f" cycle; appending took {spread(appends)} (not counted).",
        "pipectl's cycle: open connections (as the agent has), an engine built for this"
        " cycle's window (previous cycle, now] and validated against the catalog (one round"
        " trip the agent would not repeat), then the probes run at the same time (missing and"
        " range on one shared scan of the new rows) and their results are recorded. A"
        " windowed duplicate check only sees duplicates among the new rows.",
    ]
    if soda_error:
        notes.append(f"Soda failed: {soda_error}")
    return Section(
        "(b) continuous checking, 1 % new rows per cycle",
        figures,
        notes,
        tables=[("pipectl per check in a cycle (median)", ["check", "time", "value"], per_check)],
    )


# --- freshness against table size ----------------------------------------------------------


async def freshness_scaling(small_dsn: str, large_dsn: str, repeats: int) -> Section:
    config = pipectl_config()
    engines: dict[str, tuple[CheckEngine, asyncpg.Connection]] = {}
    for label, dsn in (("small", small_dsn), ("large", large_dsn)):
        conn = await pipectl_db.connect(config, dsn=dsn)
        engine = CheckEngine(config)
        await engine.validate(conn, ["rp_freshness"])
        engines[label] = (engine, conn)
    times: dict[str, list[float]] = {"small": [], "large": [], "select1": []}
    sizes: dict[str, int] = {}
    try:
        for label, (_, conn) in engines.items():
            sizes[label] = int(await conn.fetchval(f"SELECT count(*) FROM {TABLE}"))
        for round_ in range(repeats):
            # The order flips every round, and SELECT 1 goes to each connection in turn, so
            # neither table's backend is always the one used just before. (With small always
            # first: 0.17 against 0.33 ms; alternating: 0.18 against 0.32 ms; the same probes
            # timed one table after the other: 0.276 against 0.286 ms. See FINDINGS.md.)
            order = ("small", "large") if round_ % 2 == 0 else ("large", "small")
            for label in order:
                engine, conn = engines[label]
                started = time.perf_counter()
                result = await engine.run("rp_freshness", conn, redis=None)
                times[label].append((time.perf_counter() - started) * 1000)
                assert result.status != "error", result.message
            conn = engines[order[round_ // 2 % 2]][1]
            started = time.perf_counter()
            await conn.fetchval("SELECT 1")
            times["select1"].append((time.perf_counter() - started) * 1000)
    finally:
        for _, conn in engines.values():
            await conn.close()
    small, large = statistics.median(times["small"]), statistics.median(times["large"])
    return Section(
        "freshness cost against table size",
        [
            Figure(
                f"freshness check, {sizes['small']:,} rows",
                ms(small),
                "",
                ms(statistics.median(times["select1"])) + " (SELECT 1)",
                f"p95 {ms(percentile(times['small'], 95))}",
            ),
            Figure(
                f"freshness check, {sizes['large']:,} rows",
                ms(large),
                "",
                ms(statistics.median(times["select1"])) + " (SELECT 1)",
                f"p95 {ms(percentile(times['large'], 95))}",
            ),
            Figure("large / small (medians)", f"{large / small:.2f}", "<= 1.5", "", ""),
        ],
        [
            f"{repeats} interleaved runs of engine.run (read-only transaction with"
            " statement_timeout, max(created_at) on the upstream btree index, evaluation)."
        ],
    )


# --- orchestration -------------------------------------------------------------------------


@contextmanager
def soda_harness(dsn: str) -> Iterator[tuple[Soda | None, str]]:
    """Soda for `dsn`, or None with the reason it cannot run here."""
    version = soda_version()
    if version is None:
        yield None, "soda-core is not installed (pip install -e '.[bench]')"
        return
    with tempfile.TemporaryDirectory() as folder:
        yield Soda(dsn, Path(folder)), f"Soda Core {version}"


async def build(db: Database, rows: int, label: str) -> None:
    with progress_bar(f"generate {label}") as update:
        await generate(db.dsn, rows, tables=("rule_performance",), progress=update)


async def run(
    rows: int, small: int, repeats: int, cycles: int, fresh_repeats: int = 200
) -> list[Section]:
    """All three figures on freshly generated databases (dropped afterwards)."""
    sections: list[Section] = []
    async with Database.create() as large_db, Database.create() as small_db:
        await build(small_db, small, f"{small:,} rows")
        await build(large_db, rows, f"{rows:,} rows")
        sections.append(await freshness_scaling(small_db.dsn, large_db.dsn, fresh_repeats))
        with soda_harness(large_db.dsn) as (soda, soda_label):
            load = load_average()
            section = await full_verification(large_db.dsn, repeats, soda)
            section.notes.append(f"{soda_label}; load average before: {load}")
            sections.append(section)
            section = await continuous(large_db.dsn, cycles, soda)
            section.notes.append(soda_label)
            sections.append(section)
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args(argv)
    with shared_servers():
        sections = asyncio.run(run(args.rows, args.small, args.repeats, args.cycles))
    for section in sections:
        section.print()


if __name__ == "__main__":
    main()
