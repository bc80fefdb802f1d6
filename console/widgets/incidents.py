"""The incidents panel the Overview shows first, and the keys that act on an incident.

Each incident (pipectl.incidents): its root cause in words, since when, what is not ok and
what else lies downstream, and the keys to act: rerun the step it points to (with what is
downstream of it), silence its first failing check, open why (the lineage screen on its
root). `n` moves to the next incident. With none: "Healthy: all N checks ok, M steps ok".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.text import Text
from textual.widgets import Static

from pipectl.format import STATUS_MARK, STATUS_STYLE, age
from pipectl.incidents import Incident, assess, healthy_text
from pipectl.lineage import Lineage
from pipectl.safetext import CELL, LINE, literal, visible
from pipectl.store import StatusSnapshot

# Names listed per line before "and N more", and incidents shown besides the selected one:
# the panel stays a few lines, so the steps still show at 80x24.
_LISTED = 4
_OTHERS = 3


def incidents_of(
    lineage: Lineage | None, status: StatusSnapshot, now: datetime
) -> tuple[Incident, ...]:
    """The incidents of a snapshot (none without a lineage graph to walk)."""
    if lineage is None:
        return ()
    return tuple(assess(lineage, status.steps, status.checks, now).incidents())


class IncidentsPanel(Static):
    """Incidents first, worst first; the selected one (marked ▶) is what the keys act on."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.incidents: tuple[Incident, ...] = ()
        self.selected = 0
        self._shown: tuple[StatusSnapshot, datetime, bool] | None = None

    @property
    def current(self) -> Incident | None:
        if not self.incidents:
            return None
        return self.incidents[min(self.selected, len(self.incidents) - 1)]

    def select_next(self) -> None:
        if self.incidents:
            self.selected = (self.selected + 1) % len(self.incidents)

    def show(
        self,
        incidents: Sequence[Incident],
        status: StatusSnapshot,
        now: datetime,
        *,
        read_only: bool = False,
    ) -> None:
        previous = self.current.root_name if self.current else None
        self.incidents = tuple(incidents)
        roots = [i.root_name for i in self.incidents]
        self.selected = roots.index(previous) if previous in roots else 0
        self._shown = (status, now, read_only)
        self._render_body()

    def rerender(self) -> None:
        """Again, with the same incidents (after the selection moved)."""
        if self._shown is not None:
            self._render_body()

    def _render_body(self) -> None:
        assert self._shown is not None
        status, now, read_only = self._shown
        self.set_class(bool(self.incidents), "-incidents")
        if not self.incidents:
            self.border_title = "Incidents"
            self.update(Text(healthy_text(status.steps, status.checks, now), style="green"))
            return
        self.border_title = f"Incidents ({len(self.incidents)})"
        width = max(40, self.content_size.width or 78)
        # On a short terminal the steps below keep their rows: one other incident, the
        # rest counted.
        room = 1 if self.app.size.height < 30 else _OTHERS
        body = Text()
        others = 0
        for index, incident in enumerate(self.incidents):
            if index == self.selected:
                part = render_incident(incident, now, read_only=read_only)
            elif others < room:
                others += 1
                part = render_line(incident, now, width)
            else:
                continue
            if body:
                body.append("\n")
            body.append_text(part)
        hidden = len(self.incidents) - 1 - others
        if hidden:
            body.append(f"\n  and {hidden} more (n: next)", style="dim")
        self.update(body)


def _header(incident: Incident, now: datetime, selected: bool) -> Text:
    severity = str(incident.severity)
    style = STATUS_STYLE.get(severity, "")
    text = Text("▶ " if selected else "  ", style="bold")
    text.append(f"{STATUS_MARK.get(severity, '?')} ", style=style)
    text.append_text(
        literal(f"{incident.root} ({incident.root_kind})", f"bold {style}", limit=CELL)
    )
    text.append(f"  since {age(incident.since, now)}", style="dim")
    return text


def render_line(incident: Incident, now: datetime, width: int) -> Text:
    """An incident that is not selected: one line, its cause cut to the width."""
    text = _header(incident, now, selected=False)
    room = width - text.cell_len - 3
    if room > 10:
        text.append(" — ", style="dim")
        text.append(visible(incident.cause_text, limit=room), style="dim")
    return text


def render_incident(incident: Incident, now: datetime, *, read_only: bool) -> Text:
    """The selected incident: its cause, what is not ok (counted by type), what else is
    downstream, and the keys."""
    text = _header(incident, now, selected=True)
    text.append("\n  ")
    text.append_text(literal(incident.cause_text, limit=LINE))
    text.append("\n  not ok: ", style="dim")
    text.append(_counted(incident))
    names = {(m.type, m.name) for m in incident.members}
    downstream = [i.short for i in incident.impacts if (i.type, i.name) not in names]
    if downstream:
        text.append(" · downstream, ok so far: ", style="dim")
        text.append(visible(_listed(downstream), limit=LINE))
    text.append("\n  ")
    text.append_text(keys_line(incident, read_only=read_only))
    return text


def _counted(incident: Incident) -> str:
    """`user_feedback_freshness fail, 2 more checks, 5 summaries stale`."""
    checks = [m for m in incident.members if m.type == "check"]
    steps = [m for m in incident.members if m.type == "step"]
    summaries = [m for m in incident.members if m.type == "relation"]
    parts = []
    if checks:
        first = checks[0]
        parts.append(visible(f"{first.short} {first.status}", limit=CELL))
        if len(checks) > 1:
            parts.append(f"{len(checks) - 1} more check{'s' if len(checks) > 2 else ''}")
    if steps:
        if len(steps) == 1:
            parts.append(visible(f"step {steps[0].short} {steps[0].status}", limit=CELL))
        else:
            parts.append(f"{len(steps)} steps")
    if summaries:
        if len(summaries) == 1:
            parts.append(visible(f"{summaries[0].short} {summaries[0].status}", limit=CELL))
        else:
            parts.append(f"{len(summaries)} summaries stale")
    return ", ".join(parts)


def keys_line(incident: Incident, *, read_only: bool) -> Text:
    """The keys that act on the selected incident, with what each would act on."""
    keys = Text()
    parts: list[tuple[str, str]] = []
    if incident.rerun and not read_only:
        parts.append(("x", f"rerun {incident.rerun}+down"))
    if incident.checks and not read_only:
        parts.append(("z", f"silence {incident.checks[0]}"))
    parts.append(("i", "why"))
    parts.append(("n", "next"))
    for index, (key, what) in enumerate(parts):
        if index:
            keys.append(" · ", style="dim")
        keys.append(key, style="bold reverse")
        keys.append(" ")
        keys.append(visible(what, limit=CELL), style="dim")
    return keys


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
