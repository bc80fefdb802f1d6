"""A DataTable fed with whole snapshots that updates in place, keyed by stable row keys.

The operator's cursor and scroll position survive every refresh: rows are matched by key,
changed cells are rewritten, new rows appended; only a change of order rebuilds the table, and
then the cursor goes back to the row it was on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowKey

from pipectl.safetext import CELL, has_hidden, literal

Cell = Text | str

# A Text cell longer than this was not cut by the screen that built it.
CELL_MAX = 2 * CELL


@dataclass(frozen=True)
class ColumnSpec:
    key: str
    label: str
    width: int | None = None
    sortable: bool = True


@dataclass(frozen=True)
class TableRow:
    """One row: its stable key, the cells shown, the values it sorts by, the text it filters by."""

    key: str
    cells: tuple[Cell, ...]
    sort_values: tuple[Any, ...] = ()
    text: str = field(default="", compare=False)

    def matches(self, needle: str) -> bool:
        if not needle:
            return True
        haystack = self.text or " ".join(str(c) for c in self.cells)
        return needle.casefold() in haystack.casefold()


@dataclass(frozen=True)
class Ordering:
    """Which column a table is sorted by; None keeps the snapshot's own order."""

    column: int | None = None
    reverse: bool = False

    def next(self, columns: Sequence[ColumnSpec]) -> Ordering:
        sortable = [i for i, c in enumerate(columns) if c.sortable]
        if not sortable:
            return self
        if self.column is None or self.column not in sortable:
            return Ordering(sortable[0], self.reverse)
        position = sortable.index(self.column) + 1
        return Ordering(sortable[position] if position < len(sortable) else None, self.reverse)

    def apply(self, rows: Sequence[TableRow]) -> list[TableRow]:
        if self.column is None:
            return list(reversed(rows)) if self.reverse else list(rows)
        index = self.column
        return sorted(rows, key=lambda r: _sortable(r.sort_values[index]), reverse=self.reverse)


def _sortable(value: Any) -> tuple[int, Any]:
    """None sorts last (first when reversed), without comparing None to values."""
    return (1, 0) if value is None else (0, value)


class LiveTable(DataTable[Cell]):
    """Row cursor, zebra stripes, and `show(rows)` for in-place updates."""

    def __init__(self, columns: Sequence[ColumnSpec], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.specs = tuple(columns)

    def on_mount(self) -> None:
        for spec in self.specs:
            self.add_column(spec.label, key=spec.key, width=spec.width)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor, if any."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return key.value

    def show(self, rows: Sequence[TableRow]) -> None:
        """Make the table show exactly `rows`, in that order, touching as little as it can."""
        wanted = [r.key for r in rows]
        shown = [str(row.key.value) for row in self.ordered_rows]
        if wanted == shown[: len(wanted)] and len(wanted) <= len(shown):
            for key in shown[len(wanted) :]:
                self.remove_row(key)
            self._update(rows)
        elif shown == wanted[: len(shown)]:
            self._update(rows[: len(shown)])
            for row in rows[len(shown) :]:
                self.add_row(*_texts(row), key=row.key)
        else:
            self._rebuild(rows)

    def _update(self, rows: Sequence[TableRow]) -> None:
        for row in rows:
            current = self.get_row(row.key)
            for spec, old, new in zip(self.specs, current, _texts(row), strict=False):
                if old != new:
                    self.update_cell(row.key, spec.key, new, update_width=spec.width is None)

    def _rebuild(self, rows: Sequence[TableRow]) -> None:
        selected = self.selected_key
        scroll_y = self.scroll_y
        self.clear()
        for row in rows:
            self.add_row(*_texts(row), key=row.key)
        if selected is not None and RowKey(selected) in self.rows:
            self.move_cursor(row=self.get_row_index(selected), scroll=False)
        self.scroll_to(y=scroll_y, animate=False, immediate=True)


def _texts(row: TableRow) -> tuple[Text, ...]:
    """Cells as Text, each one line of literal text: a string is never read as markup (an
    error message or a user name with brackets in it must not break the table), control
    characters are shown as escapes and long text is cut, whoever built the cell."""
    return tuple(cell_text(cell) for cell in row.cells)


def cell_text(cell: Cell) -> Text:
    if isinstance(cell, str):
        return literal(cell, limit=CELL)
    if len(cell) > CELL_MAX or has_hidden(cell.plain):
        # Built from someone's text without `literal`: rebuilt in the cell's base style.
        return literal(cell.plain, cell.style, limit=CELL_MAX)
    return cell
