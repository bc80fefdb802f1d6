"""Shown while the pipectl schema is missing, behind or ahead: what is wrong and what to run."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from pipectl.console.actions import SCHEMA, bindings
from pipectl.safetext import literal


class SchemaScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings(SCHEMA)  # type: ignore[assignment]

    def __init__(self, problem: str, target: str) -> None:
        super().__init__()
        self.problem = problem
        self.target = target

    def compose(self) -> ComposeResult:
        with Vertical(id="schema"):
            yield Static(id="schema-problem")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#schema").border_title = "The pipectl schema is not usable"
        self.show_problem(self.problem)

    def show_problem(self, problem: str) -> None:
        self.problem = problem
        self.query_one("#schema-problem", Static).update(
            Text.assemble(
                literal(problem, "bold"),
                "\n\n",
                ("database: ", "dim"),
                literal(self.target),
                "\n\nRun ",
                ("pipectl db upgrade", "bold"),
                " as the schema's owner, then press ",
                ("ctrl+r", "bold"),
                " (the console also retries every 30 s). ",
                ("q", "bold"),
                " quits.",
            )
        )
