"""A held run's evidence: each gate with its value, the previous value and its verdict."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from pipectl.format import number
from pipectl.model import Run
from pipectl.safetext import CELL, LINE, literal


def gate_rows(run: Run) -> list[dict[str, Any]]:
    """The gates recorded in a run's detail (written by the agent; read defensively)."""
    gates = run.detail.get("gates") if isinstance(run.detail, dict) else None
    return [g for g in gates if isinstance(g, dict)] if isinstance(gates, list) else []


def gates_table(run: Run) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold")
    table.add_column("", width=1)
    table.add_column("gate", no_wrap=True)
    table.add_column("previous", justify="right")
    table.add_column("new", justify="right")
    table.add_column("says", ratio=1)
    for gate in gate_rows(run):
        passed = gate.get("passed") is True
        table.add_row(
            Text("✓", style="green") if passed else Text("✗", style="red"),
            literal(str(gate.get("gate", "?")), limit=CELL),
            _value(gate.get("previous")),
            _value(gate.get("value")),
            literal(str(gate.get("message", "")), "" if passed else "bold", limit=LINE),
        )
    return table


def _value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return number(value)
