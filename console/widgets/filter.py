"""The `/` filter box: narrows the rows of a table as you type."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class FilterInput(Input):
    """Enter keeps the filter and returns to the table; Esc clears it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear", "Clear filter")]

    class Closed(Message):
        """The operator left the filter box (the filter may still apply)."""

    def __init__(self) -> None:
        super().__init__(
            placeholder="filter: type to narrow the rows · enter keeps · esc clears",
            id="filter",
        )

    def action_clear(self) -> None:
        self.value = ""
        self.post_message(self.Closed())

    async def action_submit(self) -> None:
        await super().action_submit()
        self.post_message(self.Closed())
