"""`pipectl fault inject|clear|list`: faults for a running demo simulator, over NOTIFY."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from rich.table import Table

from pipectl.cli.common import (
    EXIT_OK,
    EXIT_WARN,
    CliError,
    console,
    duration_argument,
    float_argument,
    load,
)
from pipectl.durations import format_duration
from pipectl.simulator.faults import FAULTS, FaultError, validate, validate_name


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fault", help="inject or clear faults in a running demo simulator (pipectl demo)"
    )
    verbs = parser.add_subparsers(dest="fault_verb", metavar="ACTION", required=True)
    inject = verbs.add_parser("inject", help="start a fault; see `pipectl fault list`")
    inject.add_argument("name", metavar="NAME", help="fault name")
    inject.add_argument(
        "--for",
        dest="duration",
        type=duration_argument(),
        metavar="DURATION",
        help="how long, e.g. 90s or 2m (default: until cleared)",
    )
    inject.add_argument("--table", help="stall/spike/drop: the APES table (or 'all')")
    inject.add_argument("--relation", help="lock: the summary to lock")
    inject.add_argument("--factor", type=float_argument(), help="spike/drop: rate multiplier")
    inject.set_defaults(handler=inject_fault)
    clear = verbs.add_parser("clear", help="stop one fault, or all of them")
    clear.add_argument("name", metavar="NAME", nargs="?", help="fault name (default: all)")
    clear.set_defaults(handler=clear_fault)
    listing = verbs.add_parser("list", help="the faults there are and what they do")
    listing.set_defaults(handler=list_faults)


def _check_name(name: str) -> None:
    try:
        validate_name(name)
    except FaultError as exc:
        raise CliError(str(exc)) from None


def _report(listeners: int, what: str) -> int:
    if listeners == 0:
        console(stderr=True).print(
            f"warning: {what} was sent, but no simulator is listening on this database "
            "(is `pipectl demo` running against it?)"
        )
        return EXIT_WARN
    console().print(f"{what}: sent to {listeners} listening simulator(s)")
    return EXIT_OK


async def inject_fault(args: argparse.Namespace) -> int:
    _check_name(args.name)
    duration: timedelta | None = args.duration
    given = {"table": args.table, "relation": args.relation, "factor": args.factor}
    params = {key: value for key, value in given.items() if value is not None}
    try:
        validate(args.name, params)
    except FaultError as exc:
        raise CliError(str(exc)) from None
    from pipectl.simulator.control import send_fault

    dsn = load(args).config.database.dsn
    listeners = await send_fault(dsn, args.name, duration, params)
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    until = f" for {format_duration(duration)}" if duration else " until cleared"
    return _report(listeners, f"inject {args.name}{f' ({shown})' if shown else ''}{until}")


async def clear_fault(args: argparse.Namespace) -> int:
    if args.name is not None:
        _check_name(args.name)
    from pipectl.simulator.control import send_clear

    dsn = load(args).config.database.dsn
    listeners = await send_clear(dsn, args.name)
    return _report(listeners, f"clear {args.name or 'all faults'}")


def list_faults(args: argparse.Namespace) -> int:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("fault")
    table.add_column("what it does", overflow="fold")
    table.add_column("parameters (default)", overflow="fold")
    for spec in FAULTS.values():
        params = "\n".join(
            f"{name}: {param.help}" + (f" ({param.default})" if param.default is not None else "")
            for name, param in spec.params.items()
        )
        table.add_row(spec.name, spec.description, params or "-")
    console().print(table)
    return EXIT_OK
