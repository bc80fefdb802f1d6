"""Confirmation dialogs for dangerous actions: they show the exact target and ask why.

Each returns its answer through `dismiss` (None when cancelled); the screen that opened it
files the request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, TypeVar, cast

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from pipectl.console.actions import DIALOG, bindings
from pipectl.console.widgets.gates import gates_table
from pipectl.durations import DurationError, format_duration, parse_duration
from pipectl.format import STATUS_STYLE, age, seconds, status_text
from pipectl.model import Run
from pipectl.request_args import MAX_SILENCE
from pipectl.safetext import CELL, LINE, literal
from pipectl.store.console import RerunPlan

if TYPE_CHECKING:
    from pipectl.console.app import PipectlApp

R = TypeVar("R")


class Dialog(ModalScreen[R]):
    """A centred box: a title, what will happen, a reason, Cancel and the action's button."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(DIALOG)  # type: ignore[assignment]
    TITLE_TEXT = ""
    CONFIRM = "Confirm"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="-dangerous"):
            yield from self.compose_body()
            yield Label("Why (kept in the audit trail)", classes="field-label")
            yield Input(placeholder="reason", id="reason")
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.CONFIRM, id="confirm", variant="error")

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        # The title names a step or check: literal text, never markup.
        self.query_one("#dialog").border_title = literal(f"⚠ {self.TITLE_TEXT}", limit=CELL)
        app = cast("PipectlApp", self.app)
        for box in self.query(Input):
            box.cursor_blink = app.cursor_blink
        self.query(Input).first().focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _next_field(self, event: Input.Submitted) -> None:
        """Enter moves on to the reason; Enter in the reason confirms."""
        if event.input.id == "reason":
            self._confirm()
        else:
            self.query_one("#reason", Input).focus()

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        problem, field, answer = self.answer()
        if problem:
            self.query_one("#problem", Static).update(literal(problem, "bold"))
            self.query_one(f"#{field}", Input).focus()
            return
        self.dismiss(answer)

    def reason(self) -> str:
        return self.query_one("#reason", Input).value.strip()

    def answer(self) -> tuple[str, str, R | None]:
        """(problem, field, answer): a problem keeps the dialog open, is shown in it, and the
        field at fault gets the focus."""
        raise NotImplementedError

    def reason_answer(self) -> tuple[str, str, str | None]:
        reason = self.reason()
        return ("a reason is needed", "reason", None) if not reason else ("", "", reason)


class RerunDialog(Dialog[str]):
    """Rerun: lists the exact steps in run order with their expected duration."""

    CONFIRM = "Rerun"

    def __init__(self, plan: RerunPlan) -> None:
        super().__init__()
        self.plan = plan
        count = len(plan.steps)
        self.TITLE_TEXT = (
            f"Rerun {plan.step} and downstream ({count} steps)"
            if plan.downstream
            else f"Rerun {plan.step}"
        )
        self.CONFIRM = f"Rerun {count} step{'s' if count != 1 else ''}"

    def compose_body(self) -> ComposeResult:
        yield Static(_plan_table(self.plan, cast("PipectlApp", self.app)), id="plan")
        total = (
            f"expected in total: p50 {seconds(self.plan.expected_p50)}, "
            f"p95 {seconds(self.plan.expected_p95)}"
        )
        if any(s.paused for s in self.plan.steps):
            total += " · paused steps run too: a manual rerun ignores the pause"
        yield Static(Text(total, style="dim"), id="total")

    def answer(self) -> tuple[str, str, str | None]:
        return self.reason_answer()


def _plan_table(plan: RerunPlan, app: PipectlApp) -> Table:
    now = app.clock()
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    table.add_column("#", justify="right", width=2)
    table.add_column("step", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    table.add_column("last run", no_wrap=True)
    for index, planned in enumerate(plan.steps, 1):
        last = planned.last_run
        last_text = Text("never", style="dim")
        if last is not None:
            state = str(last.status)
            last_text = Text(status_text(state), style=STATUS_STYLE.get(state, ""))
            last_text.append(f" {age(last.finished_at, now)}", style="dim")
        name = literal(planned.name, limit=CELL)
        if planned.paused:
            name.append(" ⏸ paused", style="yellow")
        table.add_row(
            str(index),
            name,
            seconds(planned.expected.p50),
            seconds(planned.expected.p95),
            last_text,
        )
    return table


class PublishDialog(Dialog[str]):
    """Publish anyway: names the held run and shows what its gates found."""

    CONFIRM = "Publish anyway"

    def __init__(self, step: str, held: Run) -> None:
        super().__init__()
        self.step = step
        self.held = held
        self.TITLE_TEXT = f"Publish {step} anyway (held run {held.id})"

    def compose_body(self) -> ComposeResult:
        yield Static(literal(self.held.error or "held", "bold", limit=LINE), id="explain")
        yield Static(gates_table(self.held), id="gates")
        yield Static(
            Text(
                "The step is refreshed once more with these gates measured, not enforced: "
                "readers see the new content at once, and steps waiting on it run.",
                style="dim",
            ),
            id="total",
        )

    def answer(self) -> tuple[str, str, str | None]:
        return self.reason_answer()


class PauseDialog(Dialog[str]):
    """Pause: says what pausing does, asks why."""

    CONFIRM = "Pause"

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step
        self.TITLE_TEXT = f"Pause {step}"

    def compose_body(self) -> ComposeResult:
        yield Static(
            Text.assemble(
                "Scheduled runs of ",
                literal(self.step, "bold", limit=CELL),
                " are skipped until it is resumed (",
                ("p", "bold"),
                " again). Manual reruns still run.",
            ),
            id="explain",
        )

    def answer(self) -> tuple[str, str, str | None]:
        return self.reason_answer()


class SilenceDialog(Dialog[tuple[float, str]]):
    """Silence: for how long (at most 30 days) and why."""

    CONFIRM = "Silence"

    def __init__(self, check: str, default: str = "2h") -> None:
        super().__init__()
        self.check = check
        self.default = default
        self.TITLE_TEXT = f"Silence {check}"

    def compose_body(self) -> ComposeResult:
        yield Static(
            Text.assemble(
                literal(self.check, "bold", limit=CELL),
                " keeps running and recording, but raises no alert until the silence ends.",
            ),
            id="explain",
        )
        yield Label(
            f"For how long (30m, 2h, 1d; at most {format_duration(MAX_SILENCE)})",
            classes="field-label",
        )
        yield Input(value=self.default, placeholder="30m, 2h, 1d", id="span")

    def answer(self) -> tuple[str, str, tuple[float, str] | None]:
        text = self.query_one("#span", Input).value
        try:
            span = parse_duration(text)
        except DurationError as exc:
            return (str(exc), "span", None)
        if span <= timedelta(0) or span > MAX_SILENCE:
            return (f"between 1s and {format_duration(MAX_SILENCE)}, please", "span", None)
        reason = self.reason()
        if not reason:
            return ("a reason is needed", "reason", None)
        return ("", "", (span.total_seconds(), reason))
