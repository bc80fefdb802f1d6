"""`pipectl audit STEP [--json]`: a step's published content against a full recompute.

The step comes from the config (its kind says what its defining query is: pipectl.audit).
The audit runs as the user you connect as, in one read-only REPEATABLE READ transaction with
a statement_timeout (the step's, unless `--timeout`), and needs SELECT on the summary and on
what its definition reads. Exit 0 equal, 1 different, 2 the audit could not be done (unknown
step, a step that cannot be audited, a missing privilege, a timeout), 3 database unreachable.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from rich.text import Text

from pipectl.audit import (
    EXAMPLES,
    SIGNIFICANT_DIGITS,
    Audit,
    AuditError,
    audit_step,
    audit_transaction,
    auditable,
    example_text,
)
from pipectl.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_WARN,
    NAME_ARGUMENT,
    CliError,
    console,
    duration_argument,
    load,
    print_json,
)
from pipectl.config import Config, StepConfig
from pipectl.db import connection
from pipectl.durations import POSTGRES_TIMEOUT_MAX, format_duration
from pipectl.migrate import ensure_current
from pipectl.safetext import LINE, visible

EXIT_DIFFERENT = EXIT_WARN  # like diff(1): 0 the same, 1 different, 2 trouble


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="compare a step's published summary with a full recompute of its defining query;"
        " exit 0 equal, 1 different, 2 could not audit",
    )
    parser.add_argument(
        "step", type=NAME_ARGUMENT, help="a matview or incremental step of the config"
    )
    parser.add_argument("--json", action="store_true", help="the full result as JSON")
    parser.add_argument(
        "--state",
        action="store_true",
        help="incremental steps: compare the summary its next refresh would publish now, read"
        " in the recompute's snapshot (exact while the source is being written), instead of"
        " the published table",
    )
    parser.add_argument(
        "--timeout",
        type=duration_argument(POSTGRES_TIMEOUT_MAX),
        metavar="DURATION",
        help="statement_timeout of the audit (default: the step's statement_timeout)",
    )
    parser.set_defaults(handler=run_audit)


def _step(config: Config, name: str) -> StepConfig:
    try:
        step = config.step(name)
    except KeyError:
        known = [s.name for s in config.steps]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "none configured"
        raise CliError(f"unknown step {name!r}{hint} (steps: {listing})", EXIT_FAIL) from None
    reason = auditable(step)
    if reason is not None:
        raise CliError(reason, EXIT_FAIL)
    return step


async def run_audit(args: argparse.Namespace) -> int:
    config = load(args).config
    step = _step(config, args.step)
    limit = args.timeout or step.statement_timeout or config.defaults.statement_timeout
    async with connection(config, "pipectl audit") as conn:
        await ensure_current(conn)
        try:
            async with audit_transaction(conn, limit):
                found = await audit_step(
                    conn,
                    step,
                    timezone=config.agent.timezone,
                    limit=limit,
                    basis="state" if args.state else "published",
                )
        except AuditError as exc:
            raise CliError(str(exc), EXIT_FAIL) from None
    if args.json:
        print_json(found.as_json())
    else:
        show(found)
    return EXIT_OK if found.equal else EXIT_DIFFERENT


def show(found: Audit) -> None:
    """The verdict, a few example rows each way, and what the comparison stood on."""
    write = console()
    style = "green" if found.equal else "bold red"
    write.print(Text(visible(found.verdict(), limit=LINE), style=style))
    for title, examples, total in (
        ("only in the summary", found.examples_summary, found.only_in_summary),
        ("only in the recompute", found.examples_recompute, found.only_in_recompute),
    ):
        if not total:
            continue
        first = f", the first {len(examples)}" if total > len(examples) else ""
        write.print(Text(f"{title} ({total}{first}):", style="bold"))
        for row in examples[:EXAMPLES]:
            write.print(Text("  " + visible(example_text(row, found.columns), limit=LINE)))
    write.print(Text(visible(found.explanation(), limit=LINE), style="dim"))
    rounded = ", ".join(found.rounded) or "none"
    write.print(
        Text(
            f"compared {len(found.columns)} columns both ways with EXCEPT ALL in"
            f" {format_duration_ms(found.elapsed_ms)}; floats to {SIGNIFICANT_DIGITS}"
            f" significant digits: {visible(rounded, limit=LINE)}",
            style="dim",
        )
    )


def format_duration_ms(milliseconds: float) -> str:
    if milliseconds < 1000:
        return f"{milliseconds:.0f} ms"
    from datetime import timedelta

    return format_duration(timedelta(milliseconds=round(milliseconds)))
