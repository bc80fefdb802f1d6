"""Step dependencies as a DAG: topological order and downstream closures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipectl.config import StepConfig, find_cycle


class CycleError(ValueError):
    """depends_on forms a cycle (config validation rejects this before we get here)."""


class Dag:
    def __init__(self, steps: Sequence[StepConfig]) -> None:
        self._order_index = {s.name: i for i, s in enumerate(steps)}
        self._up: dict[str, list[str]] = {s.name: list(s.depends_on) for s in steps}
        self._down: dict[str, list[str]] = {s.name: [] for s in steps}
        for step in steps:
            for upstream in step.depends_on:
                self._down[upstream].append(step.name)
        cycle = find_cycle(self._up)
        if cycle:
            raise CycleError(" -> ".join([*cycle, cycle[0]]))

    def upstream(self, name: str) -> list[str]:
        return list(self._up[name])

    def downstream(self, name: str) -> list[str]:
        return list(self._down[name])

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """Topological order of `names` (all steps by default); ties keep config order."""
        wanted = set(self._up) if names is None else set(names)
        done: set[str] = set()
        result: list[str] = []

        def visit(node: str) -> None:
            if node in done:
                return
            done.add(node)
            for upstream in sorted(self._up[node], key=self._order_index.__getitem__):
                visit(upstream)
            if node in wanted:
                result.append(node)

        for name in sorted(wanted, key=self._order_index.__getitem__):
            visit(name)
        return result

    def with_downstream(self, name: str) -> list[str]:
        """`name` and every step that depends on it, directly or not, in run order."""
        seen = {name}
        stack = [name]
        while stack:
            for child in self._down[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return self.order(seen)
