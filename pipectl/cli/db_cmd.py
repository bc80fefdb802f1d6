"""`pipectl db upgrade|status|apes`: pipectl's own schema, and the APES preset's SQL."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
from rich.table import Table

from pipectl import apes_sql, migrate
from pipectl.cli.common import EXIT_FAIL, EXIT_OK, CliError, console, load
from pipectl.db import connection, describe_connection, resolve
from pipectl.safetext import BLOCK, CELL, visible


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="manage pipectl's schema in the database")
    verbs = parser.add_subparsers(dest="db_verb", metavar="ACTION", required=True)
    upgrade = verbs.add_parser(
        "upgrade", help="apply pending migrations of the pipectl schema, then roles and grants"
    )
    upgrade.set_defaults(handler=upgrade_schema)
    status = verbs.add_parser("status", help="show applied and pending migrations")
    status.set_defaults(handler=schema_status)
    apes = verbs.add_parser(
        "apes",
        help="load the APES preset SQL: --base creates the upstream tables and views in an "
        "empty database; --materialized turns the summaries into materialized views; "
        "--indexes adds the indexes the preset's checks read (built CONCURRENTLY)",
    )
    apes.add_argument("--base", action="store_true", help="run sql/apes/schema.sql")
    apes.add_argument("--materialized", action="store_true", help="run sql/apes/materialized.sql")
    apes.add_argument(
        "--indexes", action="store_true", help="run sql/apes/indexes.sql (CONCURRENTLY)"
    )
    apes.set_defaults(handler=load_apes)
    incremental = verbs.add_parser(
        "incremental",
        help="install an incremental step's summary: replaces its (materialized) view by a "
        "table of the same columns kept by the agent from per-bucket states; --triggers also "
        "logs changes behind the watermark; --revert takes it out again",
    )
    incremental.add_argument("step", nargs="+", help="incremental step(s) of the config")
    incremental.add_argument(
        "--triggers",
        action="store_true",
        help="consent to statement-level triggers on the source table that log the hours "
        "rows are inserted, updated or deleted in behind the watermark (pipectl's invalidation "
        "log; a small cost on every write: docs/operating.md)",
    )
    incremental.add_argument(
        "--revert",
        action="store_true",
        help="drop the summary table, its state and the triggers; recreate the view after "
        '(e.g. `pipectl db apes --materialized`) and set the step back to kind = "matview"',
    )
    incremental.set_defaults(handler=install_incremental)


async def upgrade_schema(args: argparse.Namespace) -> int:
    config = load(args).config
    out = console()
    async with connection(config, "pipectl db upgrade") as conn:
        # Said before anything is written: the schema goes where this names.
        where = await describe_connection(conn, resolve(config.database.dsn))
        out.print(f"database: {where}", markup=False, highlight=False)
        report = await migrate.upgrade(conn)
    for item in report.applied:
        out.print(f"applied {item.path.name}")
    if not report.applied:
        out.print("schema is up to date")
    for role in report.roles_created:
        out.print(f"created role {role}")
    for warning in report.warnings:
        console(stderr=True).print(f"warning: {visible(warning, limit=BLOCK, multiline=True)}")
    return EXIT_OK


async def schema_status(args: argparse.Namespace) -> int:
    config = load(args).config
    out = console()
    async with connection(config, "pipectl db status") as conn:
        state = await migrate.status(conn)
    table = Table(box=None, header_style="bold")
    for column in ("version", "name", "state", "applied at", "by"):
        table.add_column(column)
    for applied in state.applied:
        mark = "applied" + (" (file changed)" if applied.version in state.changed else "")
        table.add_row(
            f"{applied.version:04d}",
            visible(applied.name, limit=CELL),
            mark,
            applied.applied_at.isoformat(timespec="seconds"),
            visible(applied.applied_by, limit=CELL),
        )
    for pending in state.pending:
        table.add_row(f"{pending.version:04d}", pending.name, "pending", "", "")
    out.print(table)
    out.print(f"database at version {state.db_version}, code at {state.code_version}")
    if state.too_new:
        console(stderr=True).print(f"error: {migrate.too_new_message(state)}")
        return EXIT_FAIL
    return EXIT_OK if not state.pending else 1


async def load_apes(args: argparse.Namespace) -> int:
    if not (args.base or args.materialized or args.indexes):
        console(stderr=True).print("nothing to do: give --base, --materialized, --indexes")
        return EXIT_FAIL
    config = load(args).config
    steps = (
        (args.base, "schema.sql", apes_sql.load_base),
        (args.materialized, "materialized.sql", apes_sql.load_materialized),
        (args.indexes, "indexes.sql", apes_sql.apply_indexes),
    )
    async with connection(config, "pipectl db apes") as conn:
        for wanted, name, apply in steps:
            if not wanted:
                continue
            try:
                await apply(conn)
            except asyncpg.PostgresError as exc:
                raise CliError(f"sql/apes/{name} failed: {exc}") from exc
            console().print(f"loaded sql/apes/{name}")
    return EXIT_OK


async def install_incremental(args: argparse.Namespace) -> int:
    from pipectl.store import incremental

    if args.revert and args.triggers:
        raise CliError("give --triggers or --revert, not both")
    config = load(args).config
    steps = {s.name: s for s in config.steps}
    chosen = []
    for name in args.step:
        step = steps.get(name)
        if step is None:
            raise CliError(f"no step {name!r} in the config")
        if step.kind != "incremental":
            raise CliError(f'step {name!r} is kind = "{step.kind}", not "incremental"')
        chosen.append(step)
    out = console()
    async with connection(config, "pipectl db incremental") as conn:
        for step in chosen:
            try:
                async with conn.transaction():
                    if args.revert:
                        done = await incremental.uninstall(conn, step)
                    else:
                        done = await incremental.install(conn, step, triggers=args.triggers)
            except incremental.IncrementalError as exc:
                raise CliError(f"step {step.name}: {exc}") from None
            except asyncpg.PostgresError as exc:
                raise CliError(f"step {step.name}: {exc}") from None
            for line in done:
                target = console(stderr=True) if line.startswith("warning:") else out
                target.print(f"{step.name}: {visible(line, limit=BLOCK)}", markup=False)
    return EXIT_OK
