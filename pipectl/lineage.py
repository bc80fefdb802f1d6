"""Data lineage: one graph of relations, steps and checks, and the walks over it.

The graph is derived, never written by hand:

- relations and what each view or materialized view reads, from the catalog (`pg_rewrite` /
  `pg_depend`, through nested views down to base tables; `store.lineage.catalog_relations`);
- the steps: a step feeds the relation it refreshes, and a step feeds each step that
  `depends_on` it (the same facts `pipectl.dag` orders runs by);
- the checks: a relation (or a freshness check's `step`) feeds each check that watches it
  (`watched_by_check`, from the check's config as published).

Edges point downstream, from what is read to what reads it. `upstream` walks towards the
inputs (why is this wrong?), `downstream` towards what they feed (what does it break?). Pure
functions over immutable facts, so the agent, the CLI and the console walk the same graph.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

NodeType = Literal["relation", "step", "check"]
Direction = Literal["upstream", "downstream"]

RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "matview",
    "f": "foreign table",
}
"""pg_class.relkind of the relations lineage knows, and the word shown for each."""

SUMMARY_KINDS = frozenset({"view", "matview"})


@dataclass(frozen=True, order=True)
class Node:
    """One thing in the graph: a relation (`schema.name`), a step or a check (by name)."""

    type: NodeType
    name: str

    @property
    def id(self) -> str:
        return f"{self.type}:{self.name}"

    @property
    def short(self) -> str:
        """The name as people say it: relations in `public` without their schema."""
        if self.type == "relation" and self.name.startswith("public."):
            return self.name.removeprefix("public.")
        return self.name


@dataclass(frozen=True)
class CatalogRelation:
    """A relation as the catalog has it: `relation` is `schema.name`, `kind` a RELKINDS
    word, `reads` the relations its definition reads directly (views, matviews)."""

    relation: str
    kind: str
    reads: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepFacts:
    name: str
    kind: str
    relation: str | None
    depends_on: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    """Relations the step itself reads (an incremental step's source): a table summarized
    into a table has no view definition in the catalog to say it."""


@dataclass(frozen=True)
class CheckFacts:
    """A check and what it watches: relations (`schema.name`) and steps."""

    name: str
    kind: str
    relations: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()


def watched_by_check(definition: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Relations and steps a check watches, from its config as published (a model_dump):
    `table`, `tables`, a quality rule's `ref_table`, a freshness check's `step`. The one
    place that knows these keys; `CheckBase.watches()` calls it for a config model."""
    relations: list[str] = []
    for key in ("table", "tables"):
        value = definition.get(key)
        values = value if isinstance(value, list) else [value]
        relations += [_qualified(v) for v in values if isinstance(v, str) and v]
    rule = definition.get("rule")
    if isinstance(rule, Mapping) and isinstance(rule.get("ref_table"), str):
        relations.append(_qualified(rule["ref_table"]))
    step = definition.get("step")
    steps = (step,) if isinstance(step, str) and step else ()
    return tuple(dict.fromkeys(relations)), steps


def _qualified(relation: str) -> str:
    return relation if "." in relation else f"public.{relation}"


_TYPE_ORDER = {"relation": 0, "step": 1, "check": 2}


def order(node: Node) -> tuple[int, str]:
    """How nodes are listed: relations, then steps, then checks, each by name."""
    return (_TYPE_ORDER[node.type], node.name)


class UnknownName(LookupError):
    """A name that is no relation, step or check of the graph; `suggestions` are the
    nearest names that are."""

    def __init__(self, name: str, suggestions: Sequence[str]) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no relation, step or check named {name!r}{hint}")


@dataclass(frozen=True)
class Lineage:
    """The graph: nodes with a kind word each, and edges from input to reader."""

    kinds: Mapping[Node, str]
    up: Mapping[Node, tuple[Node, ...]]
    down: Mapping[Node, tuple[Node, ...]]
    refreshed_by: Mapping[Node, str] = field(default_factory=dict)
    """Relation -> the step that refreshes it."""

    @classmethod
    def build(
        cls,
        relations: Iterable[CatalogRelation],
        steps: Iterable[StepFacts] = (),
        checks: Iterable[CheckFacts] = (),
    ) -> Lineage:
        """The graph from the catalog's relations, the steps and the checks. A relation the
        catalog lacks (named by a step or check, since dropped) still appears, of kind
        `missing`. A table nothing reads nor watches is a node without edges: it can be
        looked up, and whole-graph trees leave it out."""
        catalog = {r.relation: r for r in relations}
        kinds: dict[Node, str] = {}
        edges: set[tuple[Node, Node]] = set()
        refreshed_by: dict[Node, str] = {}

        def relation(name: str) -> Node:
            node = Node("relation", name)
            if node not in kinds:
                found = catalog.get(name)
                kinds[node] = found.kind if found else "missing"
            return node

        for r in catalog.values():
            relation(r.relation)
            if r.kind in SUMMARY_KINDS:
                target = relation(r.relation)
                for read in r.reads:
                    edges.add((relation(read), target))
        step_list = list(steps)
        step_names = {s.name for s in step_list}
        for s in step_list:
            node = Node("step", s.name)
            kinds[node] = s.kind
            if s.relation:
                target = relation(_qualified(s.relation))
                edges.add((node, target))
                refreshed_by.setdefault(target, s.name)
            for read in s.reads:
                edges.add((relation(_qualified(read)), node))
            for upstream in s.depends_on:
                if upstream in step_names:
                    edges.add((Node("step", upstream), node))
        for c in checks:
            node = Node("check", c.name)
            kinds[node] = c.kind
            for name in c.relations:
                edges.add((relation(_qualified(name)), node))
            for step in c.steps:
                if step in step_names:
                    edges.add((Node("step", step), node))
        up: dict[Node, list[Node]] = {n: [] for n in kinds}
        down: dict[Node, list[Node]] = {n: [] for n in kinds}
        for source, target in sorted(edges, key=lambda e: (order(e[0]), order(e[1]))):
            up[target].append(source)
            down[source].append(target)
        return cls(
            kinds=dict(sorted(kinds.items(), key=lambda item: order(item[0]))),
            up={n: tuple(v) for n, v in up.items()},
            down={n: tuple(v) for n, v in down.items()},
            refreshed_by=refreshed_by,
        )

    # ------------------------------------------------------------------ lookups

    def __contains__(self, node: object) -> bool:
        return node in self.kinds

    @property
    def nodes(self) -> list[Node]:
        return list(self.kinds)

    def kind(self, node: Node) -> str:
        return self.kinds[node]

    def label(self, node: Node) -> str:
        """`user_feedback (table)`, `step user_satisfaction_summary`, `step x (sql)`,
        `check x (freshness)`."""
        if node.type == "relation":
            return f"{node.short} ({self.kinds[node]})"
        if node.type == "step" and any(n.type == "relation" for n in self.down[node]):
            return f"step {node.name}"  # what it refreshes is shown under it
        return f"{node.type} {node.name} ({self.kinds[node]})"

    def resolve(self, name: str) -> Node:
        """The node a user means by `name`: `step:NAME`, `check:NAME`, `relation:NAME` say
        it outright; otherwise a relation (`schema.name`, or a bare name: in `public` first,
        as the default search_path, else unique across schemas), then a step, then a check.
        Raises UnknownName with the nearest names."""
        kind, sep, rest = name.partition(":")
        if sep and kind in ("relation", "step", "check"):
            candidates = [n for n in self.kinds if n.type == kind]
            name = rest
        else:
            candidates = list(self.kinds)
        relations = [n for n in candidates if n.type == "relation"]
        exact = [n for n in relations if n.name == name or n.name == f"public.{name}"]
        if exact:
            return exact[0]
        short = [n for n in relations if n.name.split(".", 1)[-1] == name]
        if len(short) == 1:
            return short[0]
        if len(short) > 1:  # in several schemas, none of them public: say which
            raise UnknownName(name, [n.name for n in short])
        types: tuple[NodeType, ...] = ("step", "check")
        for type_ in types:
            node = Node(type_, name)
            if node in candidates:
                return node
        names = sorted({n.short for n in self.kinds} | {n.name for n in self.kinds})
        raise UnknownName(name, difflib.get_close_matches(name, names, n=3, cutoff=0.6))

    def upstream(self, node: Node) -> tuple[Node, ...]:
        """What `node` reads or depends on directly."""
        return self.up[node]

    def downstream(self, node: Node) -> tuple[Node, ...]:
        """What reads `node` or depends on it directly."""
        return self.down[node]

    def ancestors(self, node: Node) -> list[Node]:
        """Everything upstream of `node`, nearest first (breadth first, ties by node)."""
        return list(self._walk(node, self.up))

    def descendants(self, node: Node) -> list[Node]:
        """Everything downstream of `node`, nearest first."""
        return list(self._walk(node, self.down))

    def _walk(self, start: Node, edges: Mapping[Node, tuple[Node, ...]]) -> Iterator[Node]:
        seen = {start}
        layer = [start]
        while layer:
            following: list[Node] = []
            for node in layer:
                for other in edges[node]:
                    if other not in seen:
                        seen.add(other)
                        following.append(other)
            following.sort(key=order)
            yield from following
            layer = following

    def roots(self) -> list[Node]:
        """Nodes nothing feeds: base tables, steps without upstream steps, orphan checks;
        relations first, then steps, then checks (by name). A relation with no edges at all
        (nothing reads or watches it) is not part of the pipeline and is left out."""
        return sorted((n for n in self.kinds if not self.up[n] and self._linked(n)), key=order)

    def _linked(self, node: Node) -> bool:
        return node.type != "relation" or bool(self.up[node] or self.down[node])

    # ------------------------------------------------------------------ output

    def to_json(self, nodes: Iterable[Node] | None = None) -> dict[str, Any]:
        """Nodes and edges (of `nodes` only, when given; else of the pipeline, relations
        without any edge left out as in `tree`) as plain JSON."""
        keep = set(filter(self._linked, self.kinds) if nodes is None else nodes)
        return {
            "nodes": [node_json(self, n) for n in self.kinds if n in keep],
            "edges": [
                {"from": a.id, "to": b.id}
                for a in self.kinds
                if a in keep
                for b in self.down[a]
                if b in keep
            ],
        }

    def tree(self, start: Node | None = None, direction: Direction = "downstream") -> list[str]:
        """The graph as an indented tree of lines: from `start` (or from every root) along
        `direction`. A node met again is shown once more as `… (see above)`, not expanded,
        so a diamond or a shared input costs one line."""
        return [
            prefix + self.label(node) + ("  (see above)" if again else "")
            for prefix, node, again in self.tree_rows(start, direction)
        ]

    def tree_rows(
        self, start: Node | None = None, direction: Direction = "downstream"
    ) -> list[tuple[str, Node, bool]]:
        """`tree` as (prefix, node, shown above) rows, for callers that style each node."""
        edges = self.up if direction == "upstream" else self.down
        rows: list[tuple[str, Node, bool]] = []
        shown: set[Node] = set()

        def visit(node: Node, prefix: str, last: bool, top: bool) -> None:
            connector = "" if top else ("└─ " if last else "├─ ")
            children = edges[node]
            again = node in shown and bool(children)
            rows.append((prefix + connector, node, again))
            if again:
                return
            shown.add(node)
            inner = prefix + ("" if top else ("   " if last else "│  "))
            for i, child in enumerate(children):
                visit(child, inner, i == len(children) - 1, False)

        if start is not None:
            starts = [start]
        elif direction == "upstream":
            starts = sorted(
                (n for n in self.kinds if not self.down[n] and self._linked(n)), key=order
            )
        else:
            starts = self.roots()
        for node in starts:
            visit(node, "", True, True)
        return rows

    def connected(self, node: Node, direction: str | None = None) -> list[Node]:
        """`node` with everything up- and/or downstream of it."""
        found = [node]
        if direction in (None, "upstream"):
            found += self.ancestors(node)
        if direction in (None, "downstream"):
            found += self.descendants(node)
        return found


def node_json(lineage: Lineage, node: Node) -> dict[str, Any]:
    return {"id": node.id, "type": node.type, "name": node.name, "kind": lineage.kind(node)}


def summary_reads(relations: Iterable[CatalogRelation]) -> dict[str, list[str]]:
    """What the catalog decides of the graph: each view and matview (`schema.name (kind)`)
    and the relations it reads. The agent records it; a difference is a schema change."""
    return {
        f"{r.relation} ({r.kind})": sorted(r.reads)
        for r in sorted(relations, key=lambda r: r.relation)
        if r.kind in SUMMARY_KINDS
    }


def describe_change(
    before: Mapping[str, Sequence[str]], after: Mapping[str, Sequence[str]]
) -> list[str]:
    """The differences between two `summary_reads`, one phrase each (empty: no change)."""
    changes = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            changes.append(f"{name} added, reads {', '.join(after[name]) or 'nothing'}")
        elif name not in after:
            changes.append(f"{name} gone")
        elif list(before[name]) != list(after[name]):
            was = ", ".join(before[name]) or "nothing"
            changes.append(f"{name} now reads {', '.join(after[name]) or 'nothing'} (was {was})")
    return changes
