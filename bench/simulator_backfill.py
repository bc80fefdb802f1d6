"""Figures for the simulator's 30-day backfill (rows per table, seconds, rows/s).

    .venv/bin/python bench/simulator_backfill.py [ADMIN_DSN] [--days 30] [--rate 1.0]

Creates a scratch database on the server of ADMIN_DSN (default: an embedded PostgreSQL in a
temporary directory), loads the APES schema, backfills with a progress bar, prints the
figures and drops the database. Prints figures; never fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from pipectl.embedded import EmbeddedPostgres
from pipectl.simulator import ApesSimulator


def _dsn_for(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def _bench(admin_dsn: str, days: int, rate: float) -> None:
    name = f"pipectl_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = _dsn_for(admin_dsn, name)
    out = Console()
    try:
        sim = ApesSimulator(dsn, None, seed=1, rate=rate)
        await sim.setup()
        with Progress(
            "backfill", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out
        ) as bar:
            task = bar.add_task("rows", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            began = time.monotonic()
            report = await sim.backfill(days, progress=progress)
            elapsed = time.monotonic() - began
        conn = await asyncpg.connect(dsn)
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        await conn.close()
        for table, rows in sorted(report.rows.items()):
            out.print(f"{table:30} {rows:>9,}")
        out.print(f"{'total':30} {report.total_rows:>9,}")
        out.print(
            f"{days} days at rate {rate:g}: {elapsed:.1f}s ({report.total_rows / elapsed:,.0f}"
            f" rows/s), database {size}"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn", nargs="?", help="admin DSN (default: embedded PostgreSQL)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(_bench(args.dsn, args.days, args.rate))
        return
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedPostgres(Path(folder) / "pg", fast=True)
        try:
            asyncio.run(_bench(server.start(), args.days, args.rate))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
