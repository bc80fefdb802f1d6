"""Full and continuous verification by key shape, as users run them: `pipectl check` and
`soda contract verify` as whole processes, next to in-process times and the one-pass floor.

    python -m bench.shapes [--rows 1000000] [--dsn DSN ...] [--rounds 3] [--cycles 3]

Shapes of the duplicate check (the other five checks are the same in every shape: freshness,
row count, missing confidence_level, execution_time_ms outside 0..600000, improvement_score
outside 0..1):

- `uuid`: a single uuid key with no index (APES's `prompt_id`);
- `uuid+varchar`: the composite key (prompt_id, rule_id);
- `unique index`: a key a unique index covers (`id`, the primary key).

For each shape, interleaved rounds of: the one-pass floor (one hand-written SELECT answering
all six checks, duplicates by `count(DISTINCT key)`; the query alone, and once more as a `psql`
process that connects and runs it, the floor as a user would time it), pipectl in-process
(bench.verification's `run_pipectl`: connect, publish, validate, probe, record), `pipectl
check` as a process (its bytecode cached, as an installed pipectl has it; once more without,
for reference), Soda Core in-process and `soda contract verify` as a process (when soda-core is
installed), and the duplicate probe alone, the plan before this change (a CTE read twice, then
GROUP BY) against the plan chosen now. Every ratio is against a figure of the same round.

Continuous (`--cycles`): each cycle appends 1 % new rows, then `pipectl check` of a config
whose checks look at the new rows only (the composite key checked against all earlier rows)
runs as a process, against Soda re-verifying the table as a process.

`--dsn` reuses databases made by an earlier run (bench.common.prepare + bench.generate, as
this module does without it); continuous cycles add rows to them. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Database, Figure, Section, load_average, ms, shared_servers, spread
from bench.generate import append_rule_performance, generate
from bench.verification import EXEC_MAX, TABLE, Soda, run_pipectl, soda_version
from pipectl.config import Config, parse_config_text

os.environ.setdefault("SODA_CORE_TELEMETRY_ENABLED", "false")

LONG = "30m"


@dataclass(frozen=True)
class Shape:
    label: str
    columns: tuple[str, ...]

    @property
    def distinct(self) -> str:
        """The key for count(DISTINCT ...): a column, or a row of them."""
        if len(self.columns) == 1:
            return self.columns[0]
        return f"({', '.join(self.columns)})"

    @property
    def present(self) -> str:
        return " AND ".join(f"{c} IS NOT NULL" for c in self.columns)


SHAPES = (
    Shape("uuid", ("prompt_id",)),
    Shape("uuid+varchar", ("prompt_id", "rule_id")),
    Shape("unique index", ("id",)),
)


def checks(shape: Shape, window: timedelta | None = None) -> list[dict[str, Any]]:
    """The six checks; with `window`, every probe looks at the rows of the last `window` only."""
    scope: dict[str, Any] = (
        {"time_column": "created_at", "window": window} if window is not None else {}
    )
    quality = {"kind": "quality", "table": TABLE, "timeout": LONG, **scope}
    return [
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
            "window": window or timedelta(days=36500),
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
            "rule": {"type": "range", "column": "execution_time_ms", "min": 0.0, "max": EXEC_MAX},
            **quality,
        },
        {
            "name": "rp_score_in_range",
            "rule": {"type": "range", "column": "improvement_score", "min": 0.0, "max": 1.0},
            **quality,
        },
        {
            "name": "rp_no_duplicates",
            "rule": {"type": "unique", "columns": list(shape.columns)},
            **quality,
        },
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return f'"{round(value.total_seconds() * 1000)}ms"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(dsn: str, items: list[dict[str, Any]], parallel: int | None = None) -> str:
    lines = ["[database]", f"dsn = {_toml_value(dsn)}", ""]
    if parallel is not None:
        lines += ["[agent]", f"max_parallel_checks = {parallel}", ""]
    for item in items:
        lines.append("[[checks]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in item.items()]
        lines.append("")
    return "\n".join(lines)


def config_model(dsn: str, items: list[dict[str, Any]], parallel: int | None = None) -> Config:
    """The config `pipectl check` reads from config_text: both ways run the same checks."""
    return parse_config_text(config_text(dsn, items, parallel), "bench.toml", environ={}).config


class ShapeSoda(Soda):
    """bench.verification's Soda contract with the shape's duplicate key and the sixth check."""

    def __init__(self, dsn: str, folder: Path, shape: Shape) -> None:
        super().__init__(dsn, folder)
        self.shape = shape

    def contract(self, since: datetime | None = None) -> Path:
        path = super().contract(since)
        text = path.read_text().replace(
            "columns: [prompt_id, rule_id]", f"columns: [{', '.join(self.shape.columns)}]"
        )
        text += (
            "  - name: improvement_score\n    checks:\n      - invalid:\n"
            "          valid_min: 0\n          valid_max: 1\n"
        )
        path.write_text(text)
        return path


# --- timed pieces --------------------------------------------------------------------------


def installed_env(folder: Path) -> dict[str, str]:
    """The environment of a `pipectl` process as an installed pipectl runs: its modules'
    bytecode cached (pip compiles on install; here in `folder`, outside the tree). This
    machine's sessions set PYTHONDONTWRITEBYTECODE=1, with which an editable install compiles
    every pipectl module again at each start (~0.2 s of CPU, bench/FINDINGS.md)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    return env


def uncached_env() -> dict[str, str]:
    """As installed_env, without a bytecode cache: every module compiled at start."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall time (ms) of a whole process, as the user waits for it, and its exit code."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode not in (0, 1, 2, 3) or "Traceback" in done.stderr:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed, done.returncode


async def timed_sql(dsn: str, sql: str, *args: Any) -> float:
    """Wall time (ms) of one query, fetched as pipectl fetches its probes: `fetch`, not
    `fetchrow`, whose row limit keeps PostgreSQL from planning parallel workers."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.fetch(sql, *args)
        return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


def floor_sql(shape: Shape) -> str:
    """One SELECT answering all six checks (Soda's approach with a plain count(DISTINCT))."""
    return (
        f"SELECT count(*), max(created_at), count(*) FILTER (WHERE confidence_level IS NULL),"
        f" count(*) FILTER (WHERE execution_time_ms < 0 OR execution_time_ms > {EXEC_MAX}),"
        " count(*) FILTER (WHERE improvement_score < 0 OR improvement_score > 1),"
        f" count(*) FILTER (WHERE {shape.present})"
        f" - count(DISTINCT {shape.distinct}) FILTER (WHERE {shape.present}) FROM {TABLE}"
    )


def old_duplicate_sql(shape: Shape) -> str:
    """The duplicate probe before plans by shape: a CTE read twice, then GROUP BY."""
    keys = ", ".join(shape.columns)
    return (
        f"WITH scope AS (SELECT {keys} FROM {TABLE})"
        " SELECT (SELECT count(*) FROM scope) AS rows_checked,"
        " (SELECT coalesce(sum(n - 1), 0) FROM"
        f" (SELECT count(*) AS n FROM scope WHERE {shape.present} GROUP BY {keys}) AS keys)"
    )


def new_duplicate_sql(shape: Shape) -> str:
    """The probe pipectl runs now (checks.quality.query), for the whole table."""
    from pipectl.checks.quality import Slices, count_query, query

    config = config_model("postgresql://unused/x", checks(shape))
    check = config.check("rp_no_duplicates")
    now = datetime.now(UTC)
    # A key a unique index covers: pipectl only counts the rows (checks.quality.probe).
    if shape.label == "unique index":
        return count_query(check, now).sql  # type: ignore[arg-type]
    # prompt_id is a uuid: the probe hashes its slices with uuid_hash_extended.
    return query(check, now, slices=Slices(key_type="uuid")).sql  # type: ignore[arg-type]


@dataclass
class Series:
    values: dict[str, list[float]]

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def has(self, name: str) -> bool:
        return bool(self.values.get(name))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def pipectl_argv(config: Path) -> list[str]:
    exe = shutil.which("pipectl", path=str(Path(sys.executable).parent)) or "pipectl"
    return [exe, "check", "--config", str(config)]


def soda_argv(soda: ShapeSoda, contract: Path) -> list[str] | None:
    exe = shutil.which("soda", path=str(Path(sys.executable).parent))
    if exe is None:
        return None
    return [
        exe,
        "contract",
        "verify",
        "--data-source",
        str(soda.data_source),
        "--contract",
        str(contract),
    ]


# --- (a) full verification per shape ----------------------------------------------------


async def full_shape(
    dsn: str, shape: Shape, rounds: int, folder: Path, *, soda_in_process: bool = True
) -> Section:
    rows = int(await asyncpg_fetchval(dsn, f"SELECT count(*) FROM {TABLE}"))
    items = checks(shape)
    config = config_model(dsn, items)
    path = folder / f"{shape.label.replace(' ', '_').replace('+', '_')}.toml"
    path.write_text(config_text(dsn, items))
    soda = None
    if soda_version():
        (folder / f"soda-{path.stem}").mkdir(exist_ok=True)
        soda = ShapeSoda(dsn, folder / f"soda-{path.stem}", shape)
    contract = soda.contract() if soda is not None else None
    series = Series({})
    answers: dict[str, Any] = {}
    await timed_sql(dsn, floor_sql(shape))  # warm-up: pages read once, hint bits settled
    installed = installed_env(folder)
    await asyncio.to_thread(timed_process, pipectl_argv(path), installed)  # writes the bytecode
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("floor", lambda: timed_sql(dsn, floor_sql(shape))),
        ("pipectl in-process", lambda: run_pipectl(dsn, config)),
        ("pipectl check", lambda: asyncio.to_thread(timed_process, pipectl_argv(path), installed)),
        (
            "pipectl check, no bytecode cache",
            lambda: asyncio.to_thread(timed_process, pipectl_argv(path), uncached_env()),
        ),
        ("old duplicate probe", lambda: timed_sql(dsn, old_duplicate_sql(shape))),
        ("new duplicate probe", lambda: timed_sql(dsn, new_duplicate_sql(shape))),
    ]
    psql = shutil.which("psql")
    if psql is not None:
        # The floor as a user would run it: a process that connects and runs the one SELECT.
        floor_argv = [psql, "-X", "-q", "-A", "-t", "-d", dsn, "-c", floor_sql(shape)]
        steps.append(("floor, psql process", lambda: asyncio.to_thread(timed_process, floor_argv)))
    if soda is not None and contract is not None:
        if soda_in_process:
            steps.append(("soda in-process", lambda: asyncio.to_thread(soda.run)))
        argv = soda_argv(soda, contract)
        if argv is not None:
            steps.append(("soda contract verify", lambda: asyncio.to_thread(timed_process, argv)))
    for round_ in range(rounds):
        # Rotate the order each round so no step always runs right after the same one.
        turn = steps[round_ % len(steps) :] + steps[: round_ % len(steps)]
        for name, step in turn:
            outcome = await step()
            if isinstance(outcome, tuple):
                series.add(name, outcome[0])
            elif isinstance(outcome, float):
                series.add(name, outcome)
            else:
                series.add(name, outcome.total_ms)
                answers[name] = outcome.answers
                if name == "pipectl in-process":
                    series.add(
                        "duplicate probe in pipectl", outcome.per_check_ms["rp_no_duplicates"]
                    )
    floor = series.median("floor")
    figures = [
        Figure(
            "floor: one SELECT, count(DISTINCT key)",
            ms(floor),
            "",
            "",
            spread(series.values["floor"]),
        )
    ]
    if series.has("floor, psql process"):
        process_floor = series.median("floor, psql process")
        figures.append(
            Figure(
                "floor as a psql process",
                ms(process_floor),
                "",
                "",
                f"pipectl check {_ratio(series.median('pipectl check'), process_floor)} this;"
                f" {spread(series.values['floor, psql process'])}",
            )
        )
    for name, target in (
        ("pipectl in-process", "<= 1.2x floor"),
        ("pipectl check", "<= 1.2x floor"),
        ("pipectl check, no bytecode cache", ""),
        ("soda in-process", ""),
        ("soda contract verify", ""),
    ):
        if series.has(name):
            value = series.median(name)
            figures.append(
                Figure(
                    name,
                    ms(value),
                    target,
                    ms(floor),
                    f"{_ratio(value, floor)} the floor; {spread(series.values[name])}",
                )
            )
    if series.has("soda contract verify"):
        figures.append(
            Figure(
                "soda contract verify / pipectl check",
                _ratio(series.median("soda contract verify"), series.median("pipectl check")),
                "> 1x (pipectl ahead)",
                "",
                "whole processes, same round",
            )
        )
    if series.has("soda in-process"):
        figures.append(
            Figure(
                "Soda / pipectl in-process",
                _ratio(series.median("soda in-process"), series.median("pipectl in-process")),
                "> 1x (pipectl ahead)",
                "",
                "",
            )
        )
    old, new = series.median("old duplicate probe"), series.median("new duplicate probe")
    figures.append(
        Figure(
            "duplicate probe alone, plan chosen now",
            ms(new),
            "",
            ms(old) + " (CTE read twice, GROUP BY)",
            f"{_ratio(old, new)} faster; {spread(series.values['new duplicate probe'])}",
        )
    )
    notes = [
        f"{rows:,} rows; {rounds} rounds, the order rotated each round; load average"
        f" {load_average()} at the end.",
        f"pipectl's duplicate probe: {new_duplicate_sql(shape)}",
        f"duplicate answer: pipectl {answers.get('pipectl in-process', {}).get('rp_no_duplicates')}"
        + (
            f", Soda {answers['soda in-process'].get('duplicate')}"
            if "soda in-process" in answers
            else ""
        ),
    ]
    if soda is None:
        notes.append("soda-core is not installed (pip install -e '.[bench]')")
    return Section(f"full verification, key {shape.label} ({shape.distinct})", figures, notes)


async def asyncpg_fetchval(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# --- (b) continuous, composite key against all earlier rows ------------------------------


LOOKUP_INDEX = "bench_rule_performance_prompt_id_created_at"


async def lookup_index_exists(conn: asyncpg.Connection) -> bool:
    """An index on (prompt_id, created_at), the one `pipectl config check` advises."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " JOIN pg_attribute b ON b.attrelid = i.indrelid AND b.attnum = i.indkey[1]"
            f" WHERE i.indrelid = '{TABLE}'::regclass AND a.attname = 'prompt_id'"
            " AND b.attname = 'created_at' AND i.indpred IS NULL)"
        )
    )


async def process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """timed_process in a thread, so the event loop stays free."""
    return await asyncio.to_thread(timed_process, argv, env)


async def duplicate_probe_ms(dsn: str, window: timedelta, *, per_key: bool) -> float:
    """The windowed duplicate probe alone, as pipectl runs it (JIT off, one transaction):
    `per_key` the lookups per new key it runs now, else the one EXISTS it ran before (planned
    as a semi-join that hashes the table)."""
    from pipectl.checks.catalog import load_catalog
    from pipectl.checks.quality import QualityCheck, query

    config = config_model(dsn, checks(SHAPES[1], window))
    check = config.check("rp_no_duplicates")
    assert isinstance(check, QualityCheck)
    found = query(check, datetime.now(UTC), per_key=per_key)
    conn = await asyncpg.connect(dsn)
    try:
        table = (await load_catalog(conn, [check.table])).table(check.table)
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL jit = off")
            started = time.perf_counter()
            await conn.fetch(found.sql, *found.args(table))
            return (time.perf_counter() - started) * 1000
    finally:
        await conn.close()


async def continuous(dsn: str, cycles: int, folder: Path, *, with_index: bool) -> Section:
    """Cycles of 1 % new rows; `with_index` creates the index on (prompt_id, created_at) that
    config check advises for the duration (APES has none), so that each new key is an index
    range lookup. In each cycle, after one read of the new rows, in an order rotated every
    cycle: `pipectl check` and `soda contract verify` as
    processes, pipectl in-process, and the duplicate probe alone with the plan before."""
    shape = SHAPES[1]
    rows = int(await asyncpg_fetchval(dsn, f"SELECT count(*) FROM {TABLE}"))
    made_index = 0.0
    conn = await asyncpg.connect(dsn)
    try:
        indexed = await lookup_index_exists(conn)
    finally:
        await conn.close()
    if with_index and not indexed:
        made_index = await timed_sql(
            dsn, f"CREATE INDEX {LOOKUP_INDEX} ON {TABLE} (prompt_id, created_at)"
        )
        indexed = True
    new_rows = max(1, rows // 100)
    installed = installed_env(folder)
    soda = ShapeSoda(dsn, folder, shape) if soda_version() else None
    contract = soda.contract() if soda is not None else None
    argv_soda = soda_argv(soda, contract) if soda is not None and contract is not None else None
    series = Series({})
    conn = await asyncpg.connect(dsn)
    try:
        since = (await conn.fetchval(f"SELECT max(created_at) FROM {TABLE}")).replace(tzinfo=UTC)
        for cycle in range(cycles):
            now = datetime.now(UTC)
            await append_rule_performance(conn, new_rows, since, now, seed=200 + cycle)
            await conn.execute(f"ANALYZE {TABLE}")
            # The new rows read once (their hint bits set, as the application's own reads
            # would), so that no step pays for being the first to read them.
            await conn.fetchval(
                f"SELECT sum(execution_time_ms) FROM {TABLE} WHERE created_at > $1",
                since.replace(tzinfo=None),
            )
            window = datetime.now(UTC) - since + timedelta(seconds=5)
            path = folder / f"cycle{cycle}.toml"
            path.write_text(config_text(dsn, checks(shape, window)))
            help_argv = [*pipectl_argv(path)[:1], "--help"]
            model = config_model(dsn, checks(shape, window))
            if cycle == 0:  # writes the bytecode cache
                await process(pipectl_argv(path), installed)
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("pipectl check, new rows", partial(process, pipectl_argv(path), installed)),
                ("pipectl --help", partial(process, help_argv, installed)),
                ("pipectl in-process, new rows", partial(run_pipectl, dsn, model)),
                (
                    "duplicate probe, per key",
                    partial(duplicate_probe_ms, dsn, window, per_key=True),
                ),
                (
                    "duplicate probe, one EXISTS",
                    partial(duplicate_probe_ms, dsn, window, per_key=False),
                ),
            ]
            if argv_soda is not None:
                steps.append(("soda contract verify, whole table", partial(process, argv_soda)))
            turn = steps[cycle % len(steps) :] + steps[: cycle % len(steps)]
            for name, step in turn:
                outcome = await step()
                if isinstance(outcome, tuple):
                    series.add(name, outcome[0])
                elif isinstance(outcome, float):
                    series.add(name, outcome)
                else:
                    series.add(name, outcome.total_ms)
                    series.add(
                        "duplicate check in pipectl", outcome.per_check_ms["rp_no_duplicates"]
                    )
            since = now
    finally:
        if made_index:
            await conn.execute(f"DROP INDEX IF EXISTS {LOOKUP_INDEX}")
        await conn.close()
    ours = series.median("pipectl check, new rows")
    inside = series.median("pipectl in-process, new rows")
    before = series.median("duplicate probe, one EXISTS")
    after = series.median("duplicate probe, per key")
    figures = [
        Figure(
            "pipectl check, new rows (process)",
            ms(ours),
            "",
            "",
            spread(series.values["pipectl check, new rows"]),
        ),
        Figure(
            "pipectl --help (process start, same cycles)",
            ms(series.median("pipectl --help")),
            "",
            "",
            f"{spread(series.values['pipectl --help'])}; issue 16 section 3",
        ),
        Figure(
            "pipectl in-process, new rows",
            ms(inside),
            "",
            "",
            spread(series.values["pipectl in-process, new rows"]),
        ),
        Figure(
            "duplicate probe alone, lookups per new key",
            ms(after),
            "",
            ms(before) + " (one EXISTS, a semi-join hashing the table)",
            f"{_ratio(before, after)} faster; {spread(series.values['duplicate probe, per key'])}",
        ),
    ]
    if series.has("soda contract verify, whole table"):
        theirs = series.median("soda contract verify, whole table")
        figures += [
            Figure(
                "soda contract verify, whole table (process)",
                ms(theirs),
                "",
                "",
                spread(series.values["soda contract verify, whole table"]),
            ),
            Figure(
                "Soda / pipectl per cycle, whole processes",
                _ratio(theirs, ours),
                ">= 30x",
                ms(theirs) + " (Soda)",
                "",
            ),
            Figure(
                "Soda / pipectl per cycle, in-process pipectl",
                _ratio(theirs, inside),
                "",
                ms(theirs) + " (Soda, as a process)",
                "",
            ),
        ]
    notes = [
        f"{cycles} cycles on {rows:,} rows growing by {new_rows:,} (1 %) per cycle; the"
        " duplicate check looks up each new (prompt_id, rule_id) among all earlier rows;"
        " index on (prompt_id, created_at): "
        + ("yes" if indexed else "no (the semi-join hashes the table)")
        + (f" (made for the bench in {ms(made_index)}, dropped after)." if made_index else "."),
        "Each cycle runs every step once, the order rotated every cycle, after one read of"
        " the new rows (the first reader of fresh rows sets their hint bits: in a run without"
        " that read, whichever step came first paid 1-2 s for it).",
        "duplicate check inside pipectl's cycle: "
        + spread(series.values["duplicate check in pipectl"]),
        f"load average {load_average()} at the end.",
    ]
    if soda is None:
        notes.append("soda-core is not installed (pip install -e '.[bench]')")
    return Section("continuous checking, composite key against all earlier rows", figures, notes)


# --- parallel probes ------------------------------------------------------------------------


async def parallel_gain(dsn: str, shape: Shape, rounds: int) -> Section:
    """The six checks in-process with their probe units one at a time against at the same
    time (agent.max_parallel_checks 1 and 4), interleaved."""
    serial = config_model(dsn, checks(shape), parallel=1)
    parallel = config_model(dsn, checks(shape), parallel=4)
    series = Series({})
    for round_ in range(rounds):
        order = [("1", serial), ("4", parallel)]
        for label, config in order if round_ % 2 == 0 else order[::-1]:
            series.add(label, (await run_pipectl(dsn, config)).total_ms)
    one, four = series.median("1"), series.median("4")
    return Section(
        f"parallel probes, key {shape.label}",
        [
            Figure(
                "max_parallel_checks = 4",
                ms(four),
                "",
                ms(one) + " (one at a time)",
                f"{_ratio(one, four)} faster; {spread(series.values['4'])}",
            ),
            Figure("max_parallel_checks = 1", ms(one), "", "", spread(series.values["1"])),
        ],
        [
            f"{rounds} rounds, order alternating; pipectl in-process (connect, publish, validate,"
            f" probe, record); load average {load_average()} at the end."
        ],
    )


# --- orchestration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    cycles: int
    shapes: list[Shape]
    soda_in_process: bool
    index: bool
    parallel: bool = False


async def run_on(dsn: str, options: Options) -> list[Section]:
    sections = []
    if options.parallel:
        sections = [await parallel_gain(dsn, shape, options.rounds) for shape in options.shapes]
        for section in sections:
            section.print()
        return sections
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for shape in options.shapes if options.rounds else []:
            sections.append(
                await full_shape(
                    dsn, shape, options.rounds, folder, soda_in_process=options.soda_in_process
                )
            )
            sections[-1].print()
        if options.cycles:
            sections.append(await continuous(dsn, options.cycles, folder, with_index=options.index))
            sections[-1].print()
    return sections


async def run(rows: int, dsns: list[str], options: Options) -> list[Section]:
    """Each section is printed as soon as it is measured (a 10M-row run takes long)."""
    if dsns:
        sections = []
        for dsn in dsns:
            sections += await run_on(dsn, options)
        return sections
    async with Database.create() as db:
        await generate(db.dsn, rows, tables=("rule_performance",))
        return await run_on(db.dsn, options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dsn", action="append", default=[], help="reuse a generated database")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--shape", action="append", choices=[s.label for s in SHAPES])
    parser.add_argument(
        "--no-soda-in-process",
        action="store_true",
        help="time Soda as a process only (its in-process run takes as long again)",
    )
    parser.add_argument(
        "--no-index",
        action="store_true",
        help="continuous cycles without an index led by prompt_id (as APES has it)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="only: the checks with probes one at a time against at the same time",
    )
    args = parser.parse_args(argv)
    options = Options(
        rounds=args.rounds,
        cycles=args.cycles,
        shapes=[s for s in SHAPES if not args.shape or s.label in args.shape],
        soda_in_process=not args.no_soda_in_process,
        index=not args.no_index,
        parallel=args.parallel,
    )
    with shared_servers():
        asyncio.run(run(args.rows, args.dsn, options))


if __name__ == "__main__":
    main()
