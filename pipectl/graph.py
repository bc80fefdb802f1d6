"""Step dependencies as published in pipectl.steps: who depends on whom, and in what order.

Pure functions over a `name -> upstream names` mapping, so the console and the CLI can show
what a rerun will touch without importing the agent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Graph = Mapping[str, Sequence[str]]


def downstream(graph: Graph, name: str) -> list[str]:
    """Steps that name `name` in their depends_on, sorted by name."""
    return sorted(step for step, ups in graph.items() if name in ups)


def with_downstream(graph: Graph, name: str) -> list[str]:
    """`name` and every step depending on it, directly or not, in an order that runs each
    step after its upstreams (ties by name)."""
    wanted = {name}
    stack = [name]
    while stack:
        for child in downstream(graph, stack.pop()):
            if child not in wanted:
                wanted.add(child)
                stack.append(child)
    return run_order(graph, wanted)


def run_order(graph: Graph, names: set[str]) -> list[str]:
    """Topological order of `names` (upstreams first, ties by name)."""
    done: set[str] = set()
    order: list[str] = []

    def visit(node: str, path: frozenset[str]) -> None:
        if node in done or node in path:
            return
        for upstream in sorted(graph.get(node, ())):
            visit(upstream, path | {node})
        done.add(node)
        if node in names:
            order.append(node)

    for name in sorted(names):
        visit(name, frozenset())
    return order
