"""Root cause and impact: what is wrong, why, and what it breaks.

A pure function of a status snapshot (steps, checks) and the lineage graph:

- an item is *not ok* when it is a check whose status is warn, fail or error and which is not
  silenced (a silenced check shows as silenced, never as failing), a step that failed, was
  skipped or cancelled, or is paused, or a summary (view or matview) that has such a check
  on it or stands downstream of something not ok (it is *stale*);
- a relation is itself *bad* when an unsilenced check watching it (and no step) is not ok:
  that is how a stalled feed shows, "freshness failing on `user_feedback`";
- the **root cause** of a not-ok item is the earliest bad thing upstream of it (or itself):
  among the bad nodes of its upstream with nothing bad further up, the one bad since the
  earliest (ties by name);
- items with the same root form one **incident**; its **impacts** are everything downstream
  of the root.

The API the console and the CLI render:

    assess(lineage, steps, checks, now) -> Assessment
    Assessment.incidents() -> list[Incident]        worst first, then oldest
    Assessment.explain(node) -> Explanation         what `pipectl why` prints

    Incident(root, root_kind, cause_text, since, impacts, members, ...)
        root        the root's name as people say it (`user_feedback`, a step, a check)
        root_kind   table | view | matview | ... for a relation, `step`, `check`
        cause_text  one sentence with times: "`user_feedback` stopped receiving rows at 03:12
                    (freshness failing since 03:27)"
        since       when the root went bad (None when unknown: a paused step)
        impacts     what lies downstream of the root (Impact: type, name, kind)
        members     the not-ok items grouped here (Member: type, name, status, since, text)
        rerun       the step to rerun once the cause is fixed (None when no step is involved)
        checks      the member checks (what silencing would quiet)

Text in these objects comes from the database (names, messages, errors): render it through
`pipectl.safetext`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipectl.lineage import SUMMARY_KINDS, Lineage, Node, NodeType
from pipectl.model import CheckStatus
from pipectl.safetext import first_line
from pipectl.store.views import CheckRow, StepRow

_BAD_CHECK = frozenset({CheckStatus.WARN, CheckStatus.FAIL, CheckStatus.ERROR})
_STEP_SEVERITY = {
    "failed": CheckStatus.FAIL,
    "held": CheckStatus.WARN,  # its gates kept the previous content: readers see no harm yet
    "failing": CheckStatus.FAIL,  # running again after a failed attempt: failing until it works
    "skipped": CheckStatus.WARN,
    "cancelled": CheckStatus.WARN,
    "paused": CheckStatus.WARN,
}
_FAILING = {
    CheckStatus.FAIL: "failing",
    CheckStatus.ERROR: "in error",
    CheckStatus.WARN: "warning",
}


@dataclass(frozen=True)
class Impact:
    type: NodeType
    name: str
    kind: str

    @property
    def short(self) -> str:
        return Node(self.type, self.name).short


@dataclass(frozen=True)
class Member:
    """A not-ok item of an incident, with why it is not ok in words."""

    type: NodeType
    name: str
    status: str
    """warn / fail / error for a check; failed / held / skipped / cancelled / paused for a step;
    stale, or a check status, for a summary."""
    since: datetime | None
    text: str

    @property
    def short(self) -> str:
        return Node(self.type, self.name).short


@dataclass(frozen=True)
class Incident:
    root: str
    root_kind: str
    cause_text: str
    since: datetime | None
    impacts: tuple[Impact, ...]
    members: tuple[Member, ...]
    root_type: NodeType = "relation"
    root_name: str = ""
    """The root's full name (`schema.name` for a relation)."""
    severity: CheckStatus = CheckStatus.FAIL
    rerun: str | None = None
    checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """Why one item is in the state it is: `pipectl why NAME`."""

    node: Node
    kind: str
    status: str
    since: datetime | None
    text: str
    root: Node | None
    chain: tuple[Node, ...]
    """From the item up to its root cause, each node feeding the one before."""
    impacts: tuple[Impact, ...]


@dataclass(frozen=True)
class _State:
    status: str
    severity: CheckStatus
    since: datetime | None
    bad: bool


def assess(
    lineage: Lineage, steps: Sequence[StepRow], checks: Sequence[CheckRow], now: datetime
) -> Assessment:
    return Assessment(lineage, steps, checks, now)


class Assessment:
    """The states of every node of the graph at `now`, and the walks that explain them."""

    def __init__(
        self,
        lineage: Lineage,
        steps: Sequence[StepRow],
        checks: Sequence[CheckRow],
        now: datetime,
    ) -> None:
        self.lineage = lineage
        self.now = now
        self.steps = {s.name: s for s in steps}
        self.checks = {c.name: c for c in checks}
        self._own: dict[Node, _State] = {}
        self._ancestry: dict[Node, list[Node]] = {}
        self._roots: dict[Node, Node | None] = {}
        for s in steps:
            self._own[Node("step", s.name)] = _step_state(s)
        for c in checks:
            self._own[Node("check", c.name)] = _check_state(c, now)
        for node in lineage.nodes:
            if node.type == "relation":
                evidence = self.evidence(node)
                if evidence:
                    first = min(evidence, key=lambda c: (_time_key(c.status_since), c.name))
                    worst = max(evidence, key=lambda c: c.status.severity).status
                    self._own[node] = _State(str(worst), worst, first.status_since, True)

    # ------------------------------------------------------------------ states

    def _up(self, node: Node) -> tuple[Node, ...]:
        return self.lineage.upstream(node) if node in self.lineage else ()

    def _down(self, node: Node) -> tuple[Node, ...]:
        return self.lineage.downstream(node) if node in self.lineage else ()

    def _ancestors(self, node: Node) -> list[Node]:
        found = self._ancestry.get(node)
        if found is None:
            found = self.lineage.ancestors(node) if node in self.lineage else []
            self._ancestry[node] = found
        return found

    def kind(self, node: Node) -> str:
        if node in self.lineage:
            return self.lineage.kind(node)
        if node.type == "check" and node.name in self.checks:
            return self.checks[node.name].kind
        if node.type == "step" and node.name in self.steps:
            return self.steps[node.name].kind
        return "missing"

    def bad(self, node: Node) -> bool:
        state = self._own.get(node)
        return state is not None and state.bad

    def evidence(self, relation: Node) -> list[CheckRow]:
        """Unsilenced not-ok checks that watch `relation` and no step: what makes it bad."""
        found = []
        for reader in self._down(relation):
            row = self.checks.get(reader.name) if reader.type == "check" else None
            if row is None or not _check_state(row, self.now).bad:
                continue
            if any(u.type == "step" for u in self._up(reader)):
                continue
            found.append(row)
        return found

    def root(self, node: Node) -> Node | None:
        """The earliest bad thing upstream of `node` (or `node` itself); None when nothing
        upstream of it is bad."""
        if node in self._roots:
            return self._roots[node]
        candidates = [a for a in [node, *self._ancestors(node)] if self.bad(a)]
        tops = [c for c in candidates if not any(self.bad(a) for a in self._ancestors(c))]
        root = None
        if tops:
            root = min(tops, key=lambda c: (_time_key(self._own[c].since), c.type, c.name))
        self._roots[node] = root
        return root

    def state(self, node: Node) -> _State:
        """Its own state, or `stale` for a summary downstream of something bad."""
        own = self._own.get(node)
        if own is not None:
            return own
        if node.type == "relation" and self.kind(node) in SUMMARY_KINDS:
            root = self.root(node)
            if root is not None:
                since = self._own[root].since
                return _State("stale", self._own[root].severity, since, True)
        if node.type == "check" and node.name in self.checks:
            row = self.checks[node.name]
            if row.silenced(self.now):
                return _State("silenced", CheckStatus.OK, row.status_since, False)
        return _State("ok", CheckStatus.OK, None, False)

    def not_ok(self) -> list[Node]:
        """Every not-ok item: checks, steps, summaries (base tables are roots, not items)."""
        nodes = {Node("check", n) for n in self.checks} | {Node("step", n) for n in self.steps}
        nodes |= {
            n for n in self.lineage.nodes if n.type == "relation" and self.kind(n) in SUMMARY_KINDS
        }
        return sorted(n for n in nodes if self.state(n).bad)

    # ------------------------------------------------------------------ incidents

    def incidents(self) -> list[Incident]:
        """Not-ok items grouped by root cause: worst first, then the oldest."""
        groups: dict[Node, list[Node]] = {}
        for node in self.not_ok():
            root = self.root(node) or node
            groups.setdefault(root, []).append(node)
        found = [self._incident(root, members) for root, members in groups.items()]
        return sorted(found, key=lambda i: (-i.severity.severity, _time_key(i.since), i.root))

    def _incident(self, root: Node, members: list[Node]) -> Incident:
        state = self._own.get(root) or self.state(root)
        impacts = self.impacts(root)
        severity = max(
            [self.state(m).severity for m in members] + [state.severity], key=lambda s: s.severity
        )
        return Incident(
            root=root.short,
            root_kind=self.kind(root) if root.type == "relation" else root.type,
            cause_text=self.cause(root),
            since=state.since,
            impacts=impacts,
            members=tuple(self._member(m) for m in members),
            root_type=root.type,
            root_name=root.name,
            severity=severity,
            rerun=self._rerun(root, impacts),
            checks=tuple(m.name for m in members if m.type == "check"),
        )

    def _member(self, node: Node) -> Member:
        state = self.state(node)
        return Member(node.type, node.name, state.status, state.since, self.explain(node).text)

    def impacts(self, node: Node) -> tuple[Impact, ...]:
        found = self.lineage.descendants(node) if node in self.lineage else []
        return tuple(Impact(n.type, n.name, self.kind(n)) for n in found)

    def _rerun(self, root: Node, impacts: Iterable[Impact]) -> str | None:
        if root.type == "step":
            return root.name
        if root.type == "relation":
            step = self.lineage.refreshed_by.get(root)
            if step:
                return step
            for impact in impacts:
                refreshed = self.lineage.refreshed_by.get(Node(impact.type, impact.name))
                if impact.type == "relation" and refreshed:
                    return refreshed
        return None

    # ------------------------------------------------------------------ words

    def cause(self, root: Node) -> str:
        """The root cause in one sentence: who, what happened, since when."""
        return f"{_name(root)} {self.phrase(root)}"

    def phrase(self, node: Node, besides: Node | None = None) -> str:
        """What is wrong with a bad node, without its name; a relation's checks other than
        `besides` (the item being explained, which says its own state)."""
        if node.type == "step":
            return _step_phrase(self.steps[node.name], self.now)
        if node.type == "check":
            return _check_phrase(self.checks[node.name], self.now)
        evidence = sorted(
            (c for c in self.evidence(node) if besides != Node("check", c.name)),
            key=lambda c: (c.kind != "freshness", -c.status.severity, _time_key(c.status_since)),
        )
        parts = [_evidence_phrase(c, self.now) for c in evidence[:2]]
        if len(evidence) > 2:
            parts.append(f"and {len(evidence) - 2} more checks")
        return "; ".join(parts) if parts else "has checks failing"

    def chain(self, node: Node, root: Node) -> tuple[Node, ...]:
        """The shortest path from `node` up to `root` (both included)."""
        parents: dict[Node, Node] = {}
        layer = [node]
        seen = {node}
        while layer and root not in seen:
            following = []
            for current in layer:
                for up in sorted(self._up(current)):
                    if up not in seen:
                        seen.add(up)
                        parents[up] = current
                        following.append(up)
            layer = following
        path = [root]
        while path[-1] != node and path[-1] in parents:
            path.append(parents[path[-1]])
        return tuple(reversed(path))

    def explain(self, node: Node) -> Explanation:
        state = self.state(node)
        kind = self.kind(node)
        root = self.root(node)
        impacts = self.impacts(node)
        if state.status == "silenced":
            text = self._fine(node, state)
            if root is not None:
                text += f"; upstream, {self.cause(root)}"
            chain = self.chain(node, root) if root is not None else (node,)
            return Explanation(node, kind, state.status, state.since, text, root, chain, impacts)
        if root is None:
            text = self._fine(node, state)
            return Explanation(node, kind, state.status, state.since, text, None, (node,), impacts)
        chain = self.chain(node, root)
        alone = node.type == "check" and root.type == "relation"
        if alone and not [c for c in self.evidence(root) if c.name != node.name]:
            # The check is all that says its table is wrong: it speaks for itself.
            row = self.checks[node.name]
            text = f"{_name(node)} on {_name(root)} {_check_phrase(row, self.now)}"
        elif root == node:
            text = self.cause(node) + self._refresh_note(node, root)
        else:
            text = f"{_name(node)} {self._item_phrase(node, state)}: " + self._via(chain)
            text += self._refresh_note(node, root)
        return Explanation(node, kind, state.status, state.since, text, root, chain, impacts)

    def _fine(self, node: Node, state: _State) -> str:
        if state.status == "silenced":
            row = self.checks[node.name]
            until = _at(row.silenced_until, self.now)
            by = f" by {row.silenced_by}" if row.silenced_by else ""
            why = f": {row.silence_reason}" if row.silence_reason else ""
            return f"{_name(node)} is {row.status} but silenced until {until}{by}{why}"
        if node.type == "check" and node.name in self.checks:
            row = self.checks[node.name]
            if row.status == CheckStatus.NODATA:
                return f"{_name(node)} has no data yet" + (
                    f": {row.message}" if row.message else ""
                )
        if node.type == "step" and node.name in self.steps:
            step = self.steps[node.name]
            if step.state == "never":
                return f"{_name(node)} has not run yet"
        return f"{_name(node)} is ok: nothing upstream of it is failing or stale"

    def _item_phrase(self, node: Node, state: _State) -> str:
        if node.type == "check":
            row = self.checks[node.name]
            failing = _FAILING.get(row.status, str(row.status))
            return f"is {failing} since {_at(row.status_since, self.now)}"
        if node.type == "step":
            return self.phrase(node)
        return "is stale"

    def _via(self, chain: tuple[Node, ...]) -> str:
        """`its input `user_feedback` stopped ...`, naming the nodes between."""
        node, root = chain[0], chain[-1]
        between = list(chain[1:-1])
        direct = len(chain) == 2
        if root.type == "step":
            if self.lineage.refreshed_by.get(node) == root.name:
                role = "its refresh step"
            elif direct:
                role = "its step" if node.type == "check" else "its upstream step"
            else:
                role = "upstream step"
        elif root.type == "relation":
            if node.type == "check":
                role = "its table" if direct else "upstream"
            else:
                role = "its input" if direct else "upstream"
        else:
            role = "upstream"
        via = f" (via {', '.join(_name(n) for n in between)})" if between else ""
        return f"{role} {_name(root)}{via} {self.phrase(root, besides=node)}"

    def _refresh_note(self, node: Node, root: Node) -> str:
        """For a summary: how its last refresh relates to the cause."""
        step_name = self.lineage.refreshed_by.get(node)
        if node.type != "relation" or not step_name or step_name not in self.steps:
            return ""
        if root == Node("step", step_name):
            return ""
        step = self.steps[step_name]
        since = self._own[root].since if root in self._own else None
        last = step.last_success_at
        if last is None:
            return f"; its refresh step {_name(Node('step', step_name))} has not succeeded yet"
        when = _at(last, self.now)
        if since is not None and last >= since:
            return f"; its last refresh at {when} succeeded on stale input"
        return f"; its last refresh succeeded at {when}"


# ---------------------------------------------------------------------- helpers


def _check_state(row: CheckRow, now: datetime) -> _State:
    if row.status in _BAD_CHECK:
        if row.silenced(now):
            return _State("silenced", CheckStatus.OK, row.status_since, False)
        return _State(str(row.status), row.status, row.status_since, True)
    return _State(str(row.status), CheckStatus.OK, row.status_since, False)


def _step_state(step: StepRow) -> _State:
    state = step.state
    severity = _STEP_SEVERITY.get(state)
    if severity is None:
        return _State(state, CheckStatus.OK, None, False)
    run = step.state_run
    since = None
    if state != "paused" and run is not None:
        since = run.finished_at or run.started_at or run.queued_at
    return _State(state, severity, since, True)


def _step_phrase(step: StepRow, now: datetime) -> str:
    state = step.state
    if state == "paused":
        by = f" by {step.paused_by}" if step.paused_by else ""
        return f"is paused{by}" + (f": {step.paused_reason}" if step.paused_reason else "")
    run = step.state_run
    when = run.finished_at or run.started_at or run.queued_at if run else None
    if state == "failing" and run is not None:
        return f"failed and is retrying: attempt {run.attempt} {run.status} since {_at(when, now)}"
    verb = {
        "failed": "failed",
        "held": "was held by its gates",
        "skipped": "was skipped",
        "cancelled": "was cancelled",
    }.get(state, f"is {state}")
    text = f"{verb} at {_at(when, now)}"
    if run is not None and run.attempt > 1:
        text += f" (attempt {run.attempt})"
    if run is not None and run.error:
        text += f": {first_line(run.error)}"
    return text


def _check_phrase(row: CheckRow, now: datetime) -> str:
    text = f"is {_FAILING.get(row.status, str(row.status))} since {_at(row.status_since, now)}"
    return text + (f": {first_line(row.message)}" if row.message else "")


def _evidence_phrase(row: CheckRow, now: datetime) -> str:
    """How a check on a relation says what is wrong with it."""
    since = _at(row.status_since, now)
    failing = _FAILING.get(row.status, str(row.status))
    if row.kind == "freshness" and row.value is not None and row.last_result_at is not None:
        newest = row.last_result_at - timedelta(seconds=row.value)
        return f"stopped receiving rows at {_at(newest, now)} (freshness {failing} since {since})"
    return f"has {row.name} {failing} since {since}" + (
        f" ({first_line(row.message)})" if row.message else ""
    )


def _name(node: Node) -> str:
    if node.type == "relation":
        return f"`{node.short}`"
    return f"{node.type} `{node.name}`"


def _at(moment: datetime | None, now: datetime) -> str:
    """Wall time: `03:12` today, `Dec 02 03:12` on another day, `?` unknown."""
    if moment is None:
        return "?"
    local = moment.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M")
    return local.strftime("%b %d %H:%M")


def _time_key(moment: datetime | None) -> float:
    return moment.timestamp() if moment is not None else float("inf")


def impact_groups(incident: Incident) -> list[tuple[str, list[str]]]:
    """What an incident impacts, by type: summaries (views, matviews), steps, checks."""
    groups: dict[str, list[str]] = {"summaries": [], "steps": [], "checks": []}
    for impact in incident.impacts:
        if impact.type == "relation":
            groups["summaries"].append(impact.short)
        else:
            groups[f"{impact.type}s"].append(impact.short)
    return [(label, names) for label, names in groups.items() if names]


def healthy_text(steps: Sequence[StepRow], checks: Sequence[CheckRow], now: datetime) -> str:
    """What to say when there is no incident: `Healthy: all 21 checks ok, 2 steps ok`, with
    what is not judged yet (no data, never ran) or silenced said too."""
    ok_checks = sum(1 for c in checks if c.status == CheckStatus.OK)
    ok_steps = sum(1 for s in steps if s.state in ("ok", "running"))
    checks_part = (
        f"all {ok_checks} checks ok" if ok_checks == len(checks) else f"{ok_checks} checks ok"
    )
    text = f"Healthy: {checks_part}, {ok_steps} step{'s' if ok_steps != 1 else ''} ok"
    aside = []
    nodata = sum(1 for c in checks if c.status == CheckStatus.NODATA)
    silenced = sum(1 for c in checks if c.status in _BAD_CHECK and c.silenced(now))
    never = sum(1 for s in steps if s.state == "never")
    if nodata:
        aside.append(f"{nodata} with no data yet")
    if silenced:
        aside.append(f"{silenced} silenced")
    if never:
        aside.append(f"{never} step{'s' if never != 1 else ''} not run yet")
    return text + (f" ({', '.join(aside)})" if aside else "")


# ---------------------------------------------------------------------- JSON


def incident_json(incident: Incident) -> dict[str, Any]:
    """An incident as `pipectl status --json` gives it."""
    return {
        "root": incident.root_name,
        "root_type": incident.root_type,
        "root_kind": incident.root_kind,
        "severity": str(incident.severity),
        "cause": incident.cause_text,
        "since": incident.since,
        "rerun": incident.rerun,
        "checks": list(incident.checks),
        "members": [
            {
                "type": m.type,
                "name": m.name,
                "status": m.status,
                "since": m.since,
                "text": m.text,
            }
            for m in incident.members
        ],
        "impacts": [{"type": i.type, "name": i.name, "kind": i.kind} for i in incident.impacts],
    }


def explanation_json(assessment: Assessment, why: Explanation) -> dict[str, Any]:
    """What `pipectl why --json` gives: the item, its state, its root cause and the chain
    from the item up to it, and what it impacts."""

    def node(n: Node) -> dict[str, Any]:
        state = assessment.state(n)
        return {
            "type": n.type,
            "name": n.name,
            "kind": assessment.kind(n),
            "status": state.status,
            "since": state.since,
        }

    return {
        **node(why.node),
        "text": why.text,
        "root": node(why.root) if why.root is not None else None,
        "cause": assessment.cause(why.root) if why.root is not None else None,
        "chain": [node(n) for n in why.chain],
        "impacts": [{"type": i.type, "name": i.name, "kind": i.kind} for i in why.impacts],
    }
