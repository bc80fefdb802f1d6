"""The facts on top of a detail screen: two label/value pairs per line, values as literal text."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from pipectl.safetext import LINE, has_hidden, literal

Fact = Text | str


def fact_text(value: Fact) -> Text:
    """A value as one line of literal text: a string is never markup (a reason such as
    `see [/var/log]` is shown as written), control characters are escapes, long text is cut.
    A Text built from someone's words without `literal` is rebuilt in its base style."""
    if isinstance(value, str):
        return literal(value, limit=LINE)
    if len(value) > LINE or has_hidden(value.plain):
        return literal(value.plain, value.style, limit=LINE)
    return value


def facts_table(rows: Sequence[tuple[str, Fact, str, Fact]]) -> Table:
    """(label, value, label, value) per line; labels are ours, values anybody's."""
    grid = Table.grid(padding=(0, 2), expand=True)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(ratio=1)
    for label, value, other_label, other_value in rows:
        grid.add_row(Text(label), fact_text(value), Text(other_label), fact_text(other_value))
    return grid
