"""`pipectl config check|show`."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from pipectl.cli.common import EXIT_OK, console, load
from pipectl.config import effective_items
from pipectl.db import describe_target, resolve
from pipectl.webconfig import load_web_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="validate or show the configuration")
    verbs = parser.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = verbs.add_parser(
        "check", help="validate; print every problem as file:line: key: message; exit 2 if any"
    )
    check.set_defaults(handler=check_config)
    show = verbs.add_parser(
        "show", help="print the effective config and where each value came from"
    )
    show.set_defaults(handler=show_config)


def check_config(args: argparse.Namespace) -> int:
    loaded = load(args, require_file=True)
    config = loaded.config
    if config.agent.metrics_web_config:
        # its problems are ConfigErrors too
        load_web_config(loaded.resolve(config.agent.metrics_web_config))
    resolve(config.database.dsn)  # a service named but not found is a ConfigError too
    console().print(f"{loaded.file}: ok ({len(config.steps)} steps, {len(config.checks)} checks)")
    return EXIT_OK


def show_config(args: argparse.Namespace) -> int:
    loaded = load(args)
    out = console()
    source = str(loaded.file) if loaded.file else "no file (built-in defaults)"
    out.print(f"config file: {source}")
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    table.add_column("from", style="dim")
    for key, value, origin in effective_items(loaded):
        table.add_row(key, value, origin)
    out.print(table)
    target = resolve(loaded.config.database.dsn)
    where = describe_target(target.dsn) if target.dsn else "the libpq environment"
    out.print(f"database: {where} ({target.how})", markup=False, highlight=False)
    return EXIT_OK
