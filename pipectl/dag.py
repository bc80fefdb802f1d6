"""Step dependencies as one DAG: the order steps run in, and what a rerun touches.

The agent builds it from its config; the console and the CLI build it from the steps the
agents published in `pipectl.steps`. All of them walk this one module, so a rerun preview
lists exactly the steps the agent runs, in the order it runs them.

The order has one rule: a step comes after every step of the plan it depends on, directly or
not; among the steps whose upstreams have all been placed, the one first by name (code-point
order) goes next. Config order plays no part: the order is a function of the step names and
their `depends_on` alone, which is exactly what an agent reading its file and a console
reading `pipectl.steps` both have. For a rerun with downstream it depends only on the step
and its descendants (any path between two of them runs through descendants), so steps
elsewhere in the graph cannot change it either.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol


class CycleError(ValueError):
    """depends_on forms a cycle (config validation rejects this before an agent gets here)."""


class HasDependencies(Protocol):
    """A step as far as the DAG cares: its name and what it depends on (a StepConfig)."""

    @property
    def name(self) -> str: ...

    @property
    def depends_on(self) -> Sequence[str]: ...


class Dag:
    """Steps and their upstreams. Upstreams that are not steps of this DAG (a disabled step)
    are listed by `upstream` but take no part in ordering."""

    def __init__(self, graph: Mapping[str, Iterable[str]]) -> None:
        self._up = {name: tuple(dict.fromkeys(ups)) for name, ups in graph.items()}
        self._down = {name: tuple(dependents(self._up, name)) for name in self._up}
        cycle = find_cycle(self._up)
        if cycle:
            raise CycleError(" -> ".join([*cycle, cycle[0]]))

    @classmethod
    def from_steps(cls, steps: Iterable[HasDependencies]) -> Dag:
        return cls({step.name: step.depends_on for step in steps})

    def __contains__(self, name: object) -> bool:
        return name in self._up

    def upstream(self, name: str) -> list[str]:
        """What `name` depends on, as declared."""
        return list(self._up[name])

    def downstream(self, name: str) -> list[str]:
        """Steps that depend on `name` directly, by name."""
        return list(self._down[name])

    def ancestors(self, name: str) -> set[str]:
        """Every step `name` depends on, directly or not."""
        return self._closure(name, self._up)

    def descendants(self, name: str) -> set[str]:
        """Every step that depends on `name`, directly or not."""
        return self._closure(name, self._down)

    def _closure(self, name: str, edges: Mapping[str, Sequence[str]]) -> set[str]:
        if name not in self._up:
            raise KeyError(name)
        seen: set[str] = set()
        stack = [name]
        while stack:
            for other in edges[stack.pop()]:
                if other in self._up and other not in seen:
                    seen.add(other)
                    stack.append(other)
        return seen

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """`names` (every step by default) in run order: upstreams first, ties by name."""
        wanted = set(self._up) if names is None else set(names)
        if unknown := wanted - self._up.keys():
            raise KeyError(", ".join(sorted(unknown)))
        before = {name: self.ancestors(name) & wanted for name in wanted}
        after: dict[str, list[str]] = {name: [] for name in wanted}
        for name, ups in before.items():
            for upstream in ups:
                after[upstream].append(name)
        waiting = {name: len(ups) for name, ups in before.items()}
        ready = [name for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        result: list[str] = []
        while ready:
            name = heapq.heappop(ready)
            result.append(name)
            for child in after[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        return result

    def with_downstream(self, name: str) -> list[str]:
        """`name` and every step that depends on it, directly or not, in run order."""
        return self.order({name} | self.descendants(name))

    def rerun(self, name: str, downstream: bool) -> list[str]:
        """The steps a rerun of `name` runs, in order: what the agent executes and what the
        console and `pipectl rerun --dry-run` show."""
        return self.with_downstream(name) if downstream else self.order([name])


def dependents(graph: Mapping[str, Iterable[str]], name: str) -> list[str]:
    """Steps of `graph` that depend on `name` directly, by name; total on any graph (the
    step detail screen shows them whatever the published steps hold)."""
    return sorted(step for step, ups in graph.items() if step != name and name in ups)


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle in a name -> upstream names graph, in order, or None. Upstreams that are
    not nodes of the graph are ignored."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None
