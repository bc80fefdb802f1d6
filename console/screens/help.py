"""`?`: the keys of the screen you are on, straight from the action registry."""

from __future__ import annotations

from typing import ClassVar, cast

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from pipectl.console.actions import APP, DIALOG, ActionRegistry, ActionSpec, bindings


def key_label(spec: ActionSpec) -> str:
    names = {"question_mark": "?", "slash": "/", "escape": "esc", "enter": "enter"}
    return spec.key_display or names.get(spec.key, spec.key)


def help_table(registry: ActionRegistry, scope: str) -> Table:
    """Every cell is Text: a Rich table reads a plain string as markup, and keys such as `/`
    or descriptions with brackets must print as written."""
    table = Table(box=None, pad_edge=False, show_header=False, expand=True)
    table.add_column("key", style="bold", no_wrap=True, width=7)
    table.add_column("action", no_wrap=True)
    table.add_column("what it does", ratio=1)
    for title, specs in (
        ("This screen", registry.for_scope(scope)),
        ("Everywhere", registry.for_scope(APP)),
    ):
        table.add_row("", Text(title, style="bold underline"), "")
        for spec in specs:
            label = Text(spec.title, style="bold red" if spec.dangerous else "")
            table.add_row(Text(key_label(spec)), label, Text(spec.description))
    hidden = [s for s in registry.hidden() if scope in s.scopes or APP in s.scopes]
    if hidden:
        names = ", ".join(sorted({s.label for s in hidden}))
        table.add_row("", "", "")
        table.add_row(
            "", Text("READ-ONLY", style="reverse bold"), Text(f"hidden: {names}", style="dim")
        )
    table.add_row("", "", "")
    table.add_row(
        "", "", Text("⚠ asks for confirmation and a reason · ctrl+p: every command", style="dim")
    )
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = bindings(DIALOG)  # type: ignore[assignment]

    def __init__(self, registry: ActionRegistry, scope: str, title: str) -> None:
        super().__init__()
        self.registry = registry
        self.scope = scope
        self.title_text = title

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(help_table(self.registry, self.scope))

    def on_mount(self) -> None:
        help_box = self.query_one("#help")
        help_box.border_title = f"Keys · {self.title_text}"
        help_box.border_subtitle = "esc closes"

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_click(self) -> None:
        self.dismiss(None)


def scope_of(screen: object) -> str:
    return cast(str, getattr(screen, "SCOPE", APP))
