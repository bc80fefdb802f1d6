"""`pipectl lineage` and `pipectl why`: the graph from the catalog, root cause and impact.

Both read the catalog and what the agents published (`store.lineage`); `why` also reads the
status snapshot and walks it with `pipectl.incidents`, as `pipectl status` does.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from pipectl import store
from pipectl.cli.common import EXIT_FAIL, EXIT_OK, CliError, connect_config, console, print_json
from pipectl.db import connection
from pipectl.format import STATUS_STYLE
from pipectl.incidents import assess, explanation_json
from pipectl.lineage import Direction, Lineage, Node, UnknownName, node_json
from pipectl.migrate import ensure_current
from pipectl.safetext import LINE, visible
from pipectl.store.lineage import published_lineage


def register(subparsers: Any) -> None:
    lineage = subparsers.add_parser(
        "lineage",
        help="what reads what: relations (from the catalog), steps and checks, as a tree",
    )
    lineage.add_argument(
        "name",
        nargs="?",
        help="a relation, step or check (step:NAME, check:NAME, relation:NAME when a name "
        "is shared); the whole graph without one",
    )
    direction = lineage.add_mutually_exclusive_group()
    direction.add_argument(
        "--upstream", action="store_true", help="only what NAME reads, down to base tables"
    )
    direction.add_argument(
        "--downstream", action="store_true", help="only what reads NAME (its impact)"
    )
    lineage.add_argument("--json", action="store_true", help="nodes and edges as JSON")
    lineage.set_defaults(handler=show_lineage)

    why = subparsers.add_parser(
        "why", help="why a relation, step or check is not ok: its root cause and impact"
    )
    why.add_argument("name", help="a relation, step or check")
    why.add_argument("--json", action="store_true", help="machine-readable output")
    why.set_defaults(handler=show_why)


def _resolve(lineage: Lineage, name: str) -> Node:
    try:
        return lineage.resolve(name)
    except UnknownName as exc:
        raise CliError(str(exc), EXIT_FAIL) from None


async def show_lineage(args: argparse.Namespace) -> int:
    config = connect_config(args)
    async with connection(config, "pipectl lineage") as conn:
        await ensure_current(conn)
        lineage = await published_lineage(conn)
    direction: Direction | None = (
        "upstream" if args.upstream else "downstream" if args.downstream else None
    )
    start = _resolve(lineage, args.name) if args.name else None
    if args.json:
        nodes = lineage.connected(start, direction) if start else None
        out: dict[str, Any] = {
            "start": node_json(lineage, start) if start else None,
            "direction": direction,
            **lineage.to_json(nodes),
        }
        print_json(out)
        return EXIT_OK
    write = console()
    if start is None:
        if not lineage.nodes:
            write.print("No relations, steps or checks to show.")
        for line in lineage.tree(direction=direction or "downstream"):
            write.print(_line(line, write.width))
        return EXIT_OK
    ways: tuple[Direction, ...] = ("upstream", "downstream")
    for way in ways:
        if direction not in (None, way):
            continue
        lines = lineage.tree(start, way)
        if direction is None:
            title = "reads (upstream)" if way == "upstream" else "read by (downstream)"
            write.print(Text(f"{title}:", style="bold"))
        for line in lines if len(lines) > 1 or direction else [lines[0] + "  (nothing)"]:
            write.print(_line(line, write.width))
    return EXIT_OK


def _line(line: str, width: int) -> Text:
    """One tree line, shown literally and cut to the width (names come from the database)."""
    return Text(visible(line, limit=max(20, min(width, LINE))))


async def show_why(args: argparse.Namespace) -> int:
    config = connect_config(args)
    async with connection(config, "pipectl why") as conn:
        await ensure_current(conn)
        lineage = await published_lineage(conn)
        snapshot = await store.status_snapshot(conn)
    node = _resolve(lineage, args.name)
    assessment = assess(lineage, snapshot.steps, snapshot.checks, snapshot.taken_at)
    why = assessment.explain(node)
    if args.json:
        print_json(explanation_json(assessment, why))
        return EXIT_OK
    write = console()
    state = assessment.state(node)
    write.print(
        Text.assemble(
            (visible(lineage.label(node)), "bold"),
            ": ",
            (state.status, STATUS_STYLE.get(state.status, "red" if state.bad else "")),
        )
    )
    write.print(Text(visible(why.text)))
    if len(why.chain) > 1:
        chain = " <- ".join(lineage.label(n) for n in why.chain)
        write.print(Text("chain: ", style="dim") + Text(visible(chain)))
    if why.impacts:
        impacts = ", ".join(f"{i.short} ({i.kind})" for i in why.impacts)
        write.print(Text("impacts: ", style="dim") + Text(visible(impacts)))
    return EXIT_OK
