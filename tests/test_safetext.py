"""pipectl.safetext: the one rule for text others wrote (see tests/reliability/test_hostile_text.py
and tests/console/test_hostile_text.py for it applied everywhere)."""

from __future__ import annotations

import io

import pytest
from rich.table import Table
from rich.text import Text

from pipectl.safetext import (
    BLOCK,
    LINE,
    LiteralConsole,
    first_line,
    has_hidden,
    literal,
    visible,
)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("nul\x00 del\x7f", "nul\\x00 del\\x7f"),
        ("c1 \x9b \x85", "c1 \\x9b \\x85"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\u202eevil\u202c \u2066x\u2069", "\\u202eevil\\u202c \\u2066x\\u2069"),
        ("ad\u200bmin \ufeff", "ad\\u200bmin \\ufeff"),
        ("line\u2028sep", "line\\u2028sep"),
        ("tag \U000e0041", "tag \\U000e0041"),
        ("lone \ud800", "lone \\ud800"),
        # Zero-width joiners: shown where they could hide text, kept where they join.
        ("a\u200db", "a\\u200db"),
        ("\u200dstart", "\\u200dstart"),
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),
        # Persian "I want": a non-joiner between two Arabic letters shapes the word.
        ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",) * 2,
        # Markup and emoji codes are text; a backslash is not escaped.
        ("[/] [bold]x[/bold] :warning:", "[/] [bold]x[/bold] :warning:"),
        ("C:\\path\\x1b", "C:\\path\\x1b"),
        ("🚀 漢字 é", "🚀 漢字 é"),
    ],
)
def test_visible_escapes_what_moves_the_cursor_or_hides(raw: str, shown: str) -> None:
    assert visible(raw) == shown
    assert has_hidden(raw) == (raw != shown)


def test_a_block_keeps_its_lines_and_tabs() -> None:
    assert visible("a\n\tb\r\nc\rd\x1b", multiline=True) == "a\n\tb\nc\\rd\\x1b"
    assert not has_hidden("a\n\tb", multiline=True)
    assert has_hidden("a\r\nb", multiline=True)


def test_long_text_is_cut_with_a_visible_marker() -> None:
    huge = "x" * (1 << 20)
    line = visible(huge)
    assert len(line) == LINE and line.endswith("x…")
    assert visible("abcdefgh", limit=5) == "abcd…"
    assert visible("abcde", limit=5) == "abcde"
    block = visible(huge, multiline=True, limit=BLOCK)
    assert block.endswith("\n… (cut: 1,048,576 characters in all)")
    assert len(block) <= BLOCK
    assert len(visible(huge, limit=None)) == len(huge)
    # An escape is never split by the cut.
    assert visible("ab\x1b\x1b\x1b", limit=7) == "ab\\x1b…"
    assert visible("ab\x1b\x1b\x1b", limit=6) == "ab…"


def test_first_line_ends_only_at_a_newline() -> None:
    assert first_line("a\rb\x85c\nd") == "a\rb\x85c"
    assert first_line(None) == "" and first_line("") == ""


def test_literal_is_never_markup() -> None:
    text = literal("[@click=app.quit]x[/] \x1b[2J", "bold", limit=100)
    assert text.plain == "[@click=app.quit]x[/] \\x1b[2J"
    assert text.spans == [] and str(text.style) == "bold"


def test_the_literal_console_prints_strings_as_typed_and_escapes_every_segment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    console = LiteralConsole(file=out, width=80, force_terminal=True, color_system="standard")
    table = Table("x")
    table.add_row("[/] cell", Text("raw \x1b]0;t\x07 in a Text", style="red"))
    console.print(table)
    console.print("[bold]not bold[/] :warning:", style="green")
    printed = out.getvalue()
    assert "[/] cell" in printed and "[bold]not bold[/] :warning:" in printed
    assert "\\x1b]0;t" in printed
    # Only our styling is an escape sequence: SGR, from the styles given.
    assert "\x1b]" not in printed and "\x07" not in printed
    assert "\x1b[32m" in printed
