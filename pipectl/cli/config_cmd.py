"""`pipectl config check|show|rules`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table

from pipectl import alert_rules
from pipectl.checks.validation import validate_catalog
from pipectl.cli.common import EXIT_OK, CliError, console, load
from pipectl.config import LoadedConfig, effective_items
from pipectl.db import DatabaseUnavailable, connect, describe_target, resolve
from pipectl.safetext import visible
from pipectl.webconfig import load_web_config


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="validate or show the configuration")
    verbs = parser.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = verbs.add_parser(
        "check",
        help="validate; print every problem as file:line: key: message; exit 2 if any",
        description="Validate the file, then, when a database is configured and reachable, "
        "every enabled step's relation and check's tables and columns against its catalog "
        "(the agent's start-up validation). Exit 2 on any problem.",
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="check the file only; do not connect to the database",
    )
    check.set_defaults(handler=check_config)
    show = verbs.add_parser(
        "show", help="print the effective config and where each value came from"
    )
    show.set_defaults(handler=show_config)
    rules = verbs.add_parser(
        "rules",
        help="print the Prometheus alert rules, with your runbook URL and scrape job",
        description="Print the Prometheus recording and alert rules (the shipped "
        "deploy/prometheus/pipectl.rules.yml is this output with the defaults). Runbook "
        "links are absolute: RUNBOOK_BASE#alertname.",
    )
    rules.add_argument(
        "--runbook-base",
        metavar="URL",
        default=alert_rules.DEFAULT_RUNBOOK_BASE,
        help="absolute URL where docs/operating.md is published "
        f"(default: {alert_rules.DEFAULT_RUNBOOK_BASE}, a placeholder)",
    )
    rules.add_argument(
        "--job",
        metavar="NAME",
        default=alert_rules.DEFAULT_JOB,
        help=f"the scrape job of the agents (default: {alert_rules.DEFAULT_JOB})",
    )
    rules.set_defaults(handler=print_rules)


def print_rules(args: argparse.Namespace) -> int:
    """Reads no config and connects nowhere: the rules depend on the arguments only."""
    try:
        text = alert_rules.render(args.runbook_base, args.job)
    except alert_rules.RulesError as exc:
        raise CliError(f"config rules: {exc}") from exc
    sys.stdout.write(text)
    return EXIT_OK


async def check_config(args: argparse.Namespace) -> int:
    loaded = load(args, require_file=True)
    config = loaded.config
    if config.agent.metrics_web_config:
        # its problems are ConfigErrors too
        load_web_config(loaded.resolve(config.agent.metrics_web_config))
    resolve(config.database.dsn)  # a service named but not found is a ConfigError too
    catalog, warnings = await _check_catalog(loaded, offline=args.offline)
    counts = f"{len(config.steps)} steps, {len(config.checks)} checks"
    # One line, literally: paths and server messages are not markup (console() escapes).
    summary = f"{visible(str(loaded.file), limit=None)}: ok ({counts})"
    out = console()
    out.print(f"{summary}; {visible(catalog, limit=None)}", soft_wrap=True)
    for warning in warnings:
        out.print(f"warning: {visible(warning, limit=None)}", soft_wrap=True)
    return EXIT_OK


async def _check_catalog(loaded: LoadedConfig, *, offline: bool) -> tuple[str, list[str]]:
    """Validate against the catalog as the agent does at start (a ConfigError listing every
    problem); what was done, for the report, and the warnings (e.g. a probe that no index
    keeps cheap). A database that cannot be reached is a note, not a failure: the file itself
    is valid."""
    if offline:
        return "catalog not checked (--offline)", []
    if "database.dsn" not in loaded.origins:  # neither the file, the environment nor libpq's
        return "catalog not checked: no database configured", []
    try:
        conn = await connect(loaded.config, application_name="pipectl config check")
    except DatabaseUnavailable as exc:
        return f"catalog not checked: {exc}", []
    try:
        engine = await validate_catalog(conn, loaded)
    finally:
        await conn.close()
    return f"catalog checked on {describe_target(loaded.config.database.dsn)}", engine.warnings


def show_config(args: argparse.Namespace) -> int:
    loaded = load(args)
    out = console()
    source = str(loaded.file) if loaded.file else "no file (built-in defaults)"
    out.print(f"config file: {visible(source, limit=None)}")
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    table.add_column("from", style="dim")
    # The whole effective config, as written: nothing is cut, control characters escaped.
    for key, value, origin in effective_items(loaded):
        table.add_row(*(visible(text, limit=None) for text in (key, value, origin)))
    out.print(table)
    target = resolve(loaded.config.database.dsn)
    where = describe_target(target.dsn) if target.dsn else "the libpq environment"
    out.print(f"database: {where} ({target.how})", markup=False, highlight=False)
    return EXIT_OK
