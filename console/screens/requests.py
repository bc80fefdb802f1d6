"""5 · Requests: queued, running and finished requests, with who asked, why, and how it ended."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType

from pipectl.console import data
from pipectl.console.actions import REQUESTS, bindings
from pipectl.console.screens.base import TableScreen
from pipectl.console.screens.checks import CheckScreen
from pipectl.console.screens.step import StepScreen
from pipectl.console.widgets.table import ColumnSpec, TableRow
from pipectl.format import STATUS_MARK, STATUS_STYLE, age, seconds
from pipectl.model import RequestKind
from pipectl.request_args import describe_args
from pipectl.safetext import CELL, first_line, literal
from pipectl.store.base import Conn
from pipectl.store.console import RequestRow

STEP_KINDS = {RequestKind.RERUN, RequestKind.PAUSE, RequestKind.RESUME}


class RequestsScreen(TableScreen[tuple[RequestRow, ...]]):
    SCOPE = REQUESTS
    BINDINGS: ClassVar[list[BindingType]] = bindings(REQUESTS)  # type: ignore[assignment]
    INTERESTS = frozenset({"requests"})
    TABLE_TITLE = "Requests"
    COLUMNS = (
        ColumnSpec("id", "#"),
        ColumnSpec("kind", "kind"),
        ColumnSpec("target", "target"),
        ColumnSpec("state", "state"),
        ColumnSpec("by", "by"),
        ColumnSpec("filed", "filed"),
        ColumnSpec("agent", "agent"),
        ColumnSpec("took", "took"),
        ColumnSpec("reason", "reason"),
        ColumnSpec("detail", "outcome detail"),
    )

    def compose_body(self) -> ComposeResult:
        yield from self.compose_table()

    async def fetch(self, conn: Conn) -> tuple[RequestRow, ...]:
        return await data.requests(conn)

    def show(self, snapshot: tuple[RequestRow, ...]) -> None:
        self.show_table(snapshot)

    def rows(self, snapshot: tuple[RequestRow, ...]) -> list[TableRow]:
        now = self.console.clock()
        return [request_row(r, now) for r in snapshot]

    def action_open(self) -> None:
        key = self.selected_key()
        row = next((r for r in self.snapshot or () if str(r.request.id) == key), None)
        if row is None or row.request.target in ("*", "all"):
            return
        if row.request.kind in STEP_KINDS:
            self.app.push_screen(StepScreen(row.request.target))
        else:
            self.app.push_screen(CheckScreen(row.request.target))


def request_row(row: RequestRow, now: datetime) -> TableRow:
    request = row.request
    state = request.state
    took = (request.done_at - request.created_at).total_seconds() if request.done_at else None
    # Arguments are whatever the row's writer chose: described, never trusted or shown raw.
    kind = f"{request.kind} {describe_args(request.kind, request.args)}".rstrip()
    detail = first_line(request.detail)
    cells = (
        str(request.id),
        literal(kind, limit=CELL),
        literal(request.target, "bold", limit=CELL),
        Text(f"{STATUS_MARK.get(state, '?')} {state}", style=STATUS_STYLE.get(state, "")),
        request.requested_by,
        age(request.created_at, now),
        row.agent or "-",
        seconds(took),
        literal(request.reason, "italic", limit=40),
        literal(detail, "dim", limit=60),
    )
    sort_values = (
        request.id,
        kind,
        request.target,
        state,
        request.requested_by,
        request.created_at.timestamp(),
        row.agent,
        took,
        request.reason,
        detail,
    )
    text = f"{request.id} {kind} {request.target} {state} {request.requested_by} {request.reason}"
    return TableRow(str(request.id), cells, sort_values, f"{text} {detail}")
