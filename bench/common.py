"""What the benchmarks share: a database to measure against, percentiles, tables.

By default each benchmark starts embedded PostgreSQL and Valkey in a temporary directory (the
same servers the demo uses); $PIPECTL_BENCH_DSN and $PIPECTL_BENCH_REDIS_URL point it at
running servers instead. A fresh database is created either way and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import pipectl.checks  # noqa: F401  (registers the check kinds the benchmarks' configs name)
from pipectl import migrate
from pipectl.embedded import EmbeddedServers
from pipectl.sqlfiles import sql_dir


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a measured value)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@dataclass
class Database:
    dsn: str
    redis_url: str

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls, rows: int = 0) -> AsyncIterator[Database]:
        """A fresh APES database (schema, materialized summaries, pipectl schema), with
        `rows` rule applications spread over 30 days."""
        with contextlib.ExitStack() as stack:
            admin = os.environ.get("PIPECTL_BENCH_DSN")
            redis_url = os.environ.get("PIPECTL_BENCH_REDIS_URL")
            if not admin or not redis_url:
                state = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                servers = EmbeddedServers(state / "servers")
                embedded_dsn, embedded_url = stack.enter_context(servers.running())
                admin = admin or embedded_dsn
                redis_url = redis_url or embedded_url
            name = f"pipectl_bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            dsn = _with_database(admin, name)
            try:
                await prepare(dsn, rows)
                yield cls(dsn, redis_url)
            finally:
                conn = await asyncpg.connect(admin)
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.close()


async def prepare(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        folder = sql_dir() / "apes"
        await conn.execute((folder / "schema.sql").read_text())
        await migrate.upgrade(conn)
        if rows:
            await fill_rule_performance(conn, rows)
        await conn.execute((folder / "materialized.sql").read_text())
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def fill_rule_performance(conn: asyncpg.Connection, rows: int) -> None:
    """Rule applications over the last 30 days, inside PostgreSQL (no row through Python)."""
    await conn.execute(
        """
        INSERT INTO rule_performance
            (rule_id, rule_name, prompt_type, improvement_score, confidence_level,
             execution_time_ms, created_at)
        SELECT 'rule_' || (g % 12), 'Rule ' || (g % 12),
               (ARRAY['code', 'writing', 'analysis', 'chat'])[1 + g % 4],
               random(), random(), (50 + random() * 450)::int,
               (now() AT TIME ZONE 'UTC') - (random() * interval '30 days')
        FROM generate_series(1, $1) AS g
        """,
        rows,
    )


# --- figures and reports ------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One measured figure, with its target and the baseline measured in the same run."""

    name: str
    value: str
    target: str = ""
    baseline: str = ""
    note: str = ""


@dataclass
class Section:
    """What one benchmark reports: figures, then free-text notes (method, noise, caveats)."""

    title: str
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    """Extra tables (title, header, rows), e.g. per-query or per-check breakdowns."""
    raw: str = ""
    """Verbatim output, for a benchmark that prints its own report."""

    def print(self) -> None:
        if self.figures:
            print_table(
                self.title,
                ["figure", "value", "target", "baseline (same run)", "note"],
                [[f.name, f.value, f.target, f.baseline, f.note] for f in self.figures],
            )
        else:
            print(f"\n{self.title}")
        for title, header, rows in self.tables:
            print_table(title, header, rows)
        if self.raw:
            print(self.raw)
        for note in self.notes:
            print(f"  - {note}")

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.figures:
            out.append(
                _md_table(
                    ["figure", "value", "target", "baseline (same run)", "note"],
                    [[f.name, f.value, f.target, f.baseline, f.note] for f in self.figures],
                )
            )
        for title, header, rows in self.tables:
            out += ["", f"**{title}**"] if title else []
            out += ["", _md_table(header, rows)]
        if self.raw:
            out += ["", "```", self.raw.rstrip(), "```"]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float) -> str:
    """Milliseconds, with precision that suits the size."""
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def spread(values: Sequence[float]) -> str:
    """Median with p5..p95, for noise statements."""
    return (
        f"median {ms(statistics.median(values))} "
        f"(p5 {ms(percentile(values, 5))}, p95 {ms(percentile(values, 95))}, n={len(values)})"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


@contextlib.contextmanager
def shared_servers() -> Iterator[tuple[str, str]]:
    """One embedded PostgreSQL + Valkey for every Database.create() inside (so that figures
    compared with each other come from the same server), unless $PIPECTL_BENCH_DSN and
    $PIPECTL_BENCH_REDIS_URL already name servers. Yields (admin DSN, Redis URL)."""
    admin = os.environ.get("PIPECTL_BENCH_DSN")
    redis_url = os.environ.get("PIPECTL_BENCH_REDIS_URL")
    if admin and redis_url:
        yield admin, redis_url
        return
    with tempfile.TemporaryDirectory() as state:
        servers = EmbeddedServers(Path(state) / "servers")
        with servers.running() as (embedded_dsn, embedded_url):
            saved = {k: os.environ.get(k) for k in ("PIPECTL_BENCH_DSN", "PIPECTL_BENCH_REDIS_URL")}
            os.environ["PIPECTL_BENCH_DSN"] = admin = admin or embedded_dsn
            os.environ["PIPECTL_BENCH_REDIS_URL"] = redis_url = redis_url or embedded_url
            try:
                yield admin, redis_url
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
