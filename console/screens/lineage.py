"""Lineage: what reads what (relations from the catalog, steps, checks), as a tree that fits
80 columns, each node coloured by its state; opened on something, also why it is in that
state (its root cause) and what it impacts. `l` opens it from any screen on the selected step
or check (the whole graph otherwise); `i` opens it on the Overview's selected incident.

Also the keys that act on an incident (`IncidentOperations`, mixed into the Overview).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from pipectl import store
from pipectl.console.actions import CHECK, LINEAGE, STEP, bindings
from pipectl.console.data import RequestIntent
from pipectl.console.screens.base import DataScreen
from pipectl.console.screens.dialogs import SilenceDialog
from pipectl.console.screens.operations import (
    CheckOperations,
    StepOperations,
    format_duration_seconds,
)
from pipectl.console.widgets.incidents import IncidentsPanel
from pipectl.incidents import Assessment, assess
from pipectl.lineage import Direction, Lineage, Node, UnknownName
from pipectl.request_args import SilenceArgs
from pipectl.safetext import LINE, literal
from pipectl.store.base import Conn
from pipectl.store.lineage import published_lineage

_STATE_STYLE = {
    "stale": "yellow",
    "silenced": "dim",
    "warn": "yellow",
    "skipped": "yellow",
    "paused": "yellow",
    "cancelled": "yellow",
    "fail": "red",
    "failed": "red",
    "error": "magenta",
}


@dataclass(frozen=True)
class LineageData:
    lineage: Lineage
    status: store.StatusSnapshot


async def lineage_data(conn: Conn) -> LineageData:
    return LineageData(await published_lineage(conn), await store.status_snapshot(conn))


class LineageScreen(DataScreen[LineageData]):
    SCOPE = LINEAGE
    BINDINGS: ClassVar[list[BindingType]] = bindings(LINEAGE)  # type: ignore[assignment]
    INTERESTS = frozenset({"runs", "steps", "checks", "check_results"})

    def __init__(self, subject: str | None = None) -> None:
        super().__init__()
        self.subject = subject

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="lineage"):
            yield Static(id="lineage-why")
            yield Static(id="lineage-tree")

    async def fetch(self, conn: Conn) -> LineageData:
        return await lineage_data(conn)

    def show(self, snapshot: LineageData) -> None:
        lineage = snapshot.lineage
        status = snapshot.status
        assessment = assess(lineage, status.steps, status.checks, self.console.clock())
        why = self.query_one("#lineage-why", Static)
        tree = self.query_one("#lineage-tree", Static)
        scroll = self.query_one("#lineage", VerticalScroll)
        start: Node | None = None
        if self.subject is not None:
            try:
                start = lineage.resolve(self.subject)
            except UnknownName as exc:
                scroll.border_title = "Lineage"
                why.update(literal(str(exc), "bold"))
                tree.update("")
                return
        if start is None:
            scroll.border_title = "Lineage: everything, from the inputs down"
            why.update(
                Text(
                    "Relations from the catalog (views and matviews down to base tables), the "
                    "steps that refresh them and the checks that watch them.",
                    style="dim",
                )
            )
            tree.update(render_tree(assessment, None, "downstream"))
            return
        scroll.border_title = literal(f"Lineage: {lineage.label(start)}", limit=LINE)
        explained = assessment.explain(start)
        state = explained.status
        why.update(
            Text.assemble(
                (f"{state}: ", f"bold {_STATE_STYLE.get(state, 'green')}"),
                literal(explained.text, limit=LINE),
            )
        )
        body = Text()
        for title, direction in (
            ("reads (upstream)", "upstream"),
            ("read by (downstream)", "downstream"),
        ):
            body.append(f"{title}\n", style="bold")
            body.append_text(render_tree(assessment, start, direction))  # type: ignore[arg-type]
            body.append("\n")
        tree.update(body)


def render_tree(assessment: Assessment, start: Node | None, direction: Direction) -> Text:
    """The tree, each node styled by its state (red failing, yellow stale or warning)."""
    lineage = assessment.lineage
    text = Text(no_wrap=True, overflow="ellipsis")
    rows = lineage.tree_rows(start, direction)
    if not rows:
        return Text("No relations, steps or checks to show.", style="dim")
    for index, (prefix, node, again) in enumerate(rows):
        if index:
            text.append("\n")
        state = assessment.state(node).status
        text.append(prefix, style="dim")
        text.append_text(literal(lineage.label(node), _STATE_STYLE.get(state, "")))
        if state not in ("ok", "never", "running", "nodata"):
            text.append(f" {state}", style=_STATE_STYLE.get(state, ""))
        if again:
            text.append("  (see above)", style="dim")
    return text


def lineage_subject(screen: object) -> str | None:
    """What `l` opens the lineage on: the detail screen's subject, the selected step or
    check, or nothing (the whole graph)."""
    if isinstance(screen, LineageScreen):
        return screen.subject
    scope = getattr(screen, "SCOPE", "")
    subject = getattr(screen, "subject", None)
    if scope in (STEP, CHECK) and isinstance(subject, str):
        return f"{scope}:{subject}"
    if isinstance(screen, StepOperations) and (step := screen.selected_step()) is not None:
        return f"step:{step.name}"
    if isinstance(screen, CheckOperations) and (check := screen.selected_check()) is not None:
        return f"check:{check.name}"
    return None


class IncidentOperations(StepOperations, CheckOperations):
    """The keys on the Overview's selected incident: rerun the step it points to with its
    downstream (`x`), silence its first failing check (`z`), why (`i`), next incident (`n`)."""

    def incidents_panel(self) -> IncidentsPanel:
        return self.query_one(IncidentsPanel)

    def action_incident_next(self) -> None:
        panel = self.incidents_panel()
        panel.select_next()
        panel.rerender()

    def action_incident_rerun(self) -> None:
        incident = self.incidents_panel().current
        if incident is None or incident.rerun is None:
            self.notify("no step to rerun for this incident", severity="warning")
            return
        self._fetch_plan(incident.rerun, True)

    def action_incident_silence(self) -> None:
        incident = self.incidents_panel().current
        if incident is None or not incident.checks:
            self.notify("no failing check in this incident", severity="warning")
            return
        name = incident.checks[0]

        def file(answer: tuple[float, str] | None) -> None:
            if answer is not None:
                span, reason = answer
                summary = f"{name} for {format_duration_seconds(span)}"
                self.console.file_request(
                    RequestIntent("silence", name, reason, SilenceArgs(seconds=span), summary)
                )

        self.app.push_screen(SilenceDialog(name), file)

    def action_incident_why(self) -> None:
        incident = self.incidents_panel().current
        if incident is None:
            self.app.push_screen(LineageScreen())
            return
        self.app.push_screen(LineageScreen(f"{incident.root_type}:{incident.root_name}"))
