"""Text from the database is data: shown literally, never read as markup or terminal control.

Reasons, names, messages and errors are written by other people (any role that may insert a
row). Wherever such text leaves the program (console widgets, notifications, CLI tables, text
logs) it goes through `visible` (a str) or `literal` (a Rich `Text`, never parsed as markup):

- control characters become escapes you can read: C0 (ESC, BEL, NUL, CR, ...), DEL, C1, line
  and paragraph separators, lone surrogates, and invisible format characters (bidi overrides
  and isolates, zero-width spaces, word joiners, BOM, tag characters) as `\\x1b`, `\\n`,
  `\\u202e`, `\\U000e0041`. A newline and a tab stay only where a block of lines is expected
  (`multiline=True`: an error in full, SQL). Zero-width (non-)joiners stay between two
  non-ASCII letters or symbols, where they shape scripts and emoji; anywhere else they could
  hide text, so they are shown.
- overlong text is cut with a visible marker (`…` on one line; a last line saying how long
  the text was for a block), so a 1 MB reason costs what a short one does.

A backslash is not escaped: the text `\\x1b` typed by someone reads the same as an escaped ESC,
which is harmless, and paths and patterns stay readable.

Markup only ever comes from our own code. `LiteralConsole` is the Rich console for the CLI:
strings are never markup or emoji codes, and every segment it writes has its control
characters escaped, whatever a caller forgot.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType
from rich.segment import Segment
from rich.style import StyleType
from rich.text import Text

# How much of one text is shown: a table cell, a single line (a reason in a facts table, a
# message), and a block of lines (an error in full, SQL).
CELL = 80
LINE = 500
BLOCK = 20_000

ELLIPSIS = "…"

# Printable ASCII is never escaped; everything else is looked at one character at a time.
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
# The ASCII control characters, with and without the newline and tab a block keeps.
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII_CONTROL_IN_BLOCK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_JOINERS = frozenset({"\u200c", "\u200d"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


@functools.lru_cache(maxsize=4096)
def _hidden(char: str) -> bool:
    """Control, format, separator or surrogate: moves the cursor, reorders, or shows nothing."""
    return unicodedata.category(char) in _HIDDEN_CATEGORIES


@functools.lru_cache(maxsize=4096)
def _joinable(char: str) -> bool:
    """A letter, mark or symbol outside ASCII: what a zero-width joiner legitimately joins."""
    return not char.isascii() and unicodedata.category(char)[0] in "LMS"


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _shown(text: str, index: int, multiline: bool) -> tuple[str, bool]:
    """How the candidate character at `index` is shown, and whether that is an escape."""
    char = text[index]
    if multiline:
        if char in "\n\t":
            return char, False
        if char == "\r" and text.startswith("\n", index + 1):
            return "", False  # CRLF line ends read as LF
    if char in _JOINERS:
        inside = 0 < index < len(text) - 1
        if inside and _joinable(text[index - 1]) and _joinable(text[index + 1]):
            return char, False
        return _escape(char), True
    if _hidden(char):
        return _escape(char), True
    return char, False


def _pieces(text: str, end: int, multiline: bool) -> Iterator[tuple[str, bool]]:
    """`text[:end]` as pieces (shown text, is it one escape), escapes made."""
    position = 0
    for match in _CANDIDATE.finditer(text, 0, end):
        start = match.start()
        if start > position:
            yield text[position:start], False
        yield _shown(text, start, multiline)
        position = start + 1
    if position < end:
        yield text[position:end], False


def visible(text: str, *, limit: int | None = LINE, multiline: bool = False) -> str:
    """`text` as it may be shown: control and invisible format characters as escapes, at most
    `limit` characters (None: all), cut with a visible marker. On one line (the default) a
    newline is an escape too; `multiline=True` keeps newlines and tabs."""
    if (limit is None or len(text) <= limit) and not has_hidden(text, multiline=multiline):
        return text
    # Each source character shows as at least one character (but the CR of a CRLF), so
    # nothing past limit + 1 source characters can be shown: a 1 MB text is never walked.
    end = len(text) if limit is None else min(len(text), limit + 1)
    pieces = _pieces(text, end, multiline)
    if limit is None:
        return "".join(piece for piece, _ in pieces)
    marker = f"\n{ELLIPSIS} (cut: {len(text):,} characters in all)" if multiline else ELLIPSIS
    kept, complete = _within(pieces, limit, len(marker))
    if complete and end == len(text):
        return kept
    return kept + marker


def _within(pieces: Iterable[tuple[str, bool]], limit: int, reserve: int) -> tuple[str, bool]:
    """The pieces that fit in `limit` characters, and whether that was all of them. When they
    do not all fit, `reserve` characters are left for the marker; an escape is never split."""
    taken: list[str] = []
    size = 0
    buffered = list(pieces)
    if sum(len(piece) for piece, _ in buffered) <= limit:
        return "".join(piece for piece, _ in buffered), True
    budget = max(0, limit - reserve)
    for piece, is_escape in buffered:
        if size + len(piece) > budget:
            if not is_escape:
                taken.append(piece[: budget - size])
            break
        taken.append(piece)
        size += len(piece)
    return "".join(taken), False


def first_line(text: str | None) -> str:
    """The first line of a message, for a one-line cell (the whole text has its own panel).
    Only a newline ends it: a CR, NEL or separator inside is shown as an escape by `visible`,
    never taken as a line end that hides what follows."""
    return (text or "").partition("\n")[0]


def literal(
    text: str,
    style: StyleType = "",
    *,
    limit: int | None = LINE,
    multiline: bool = False,
) -> Text:
    """`visible(text)` as a Rich `Text` in one style: never parsed as markup or emoji codes."""
    return Text(visible(text, limit=limit, multiline=multiline), style=style)


def has_hidden(text: str, *, multiline: bool = False) -> bool:
    """Whether `visible` would escape anything in `text` (its length aside)."""
    if text.isascii():
        pattern = _ASCII_CONTROL_IN_BLOCK if multiline else _ASCII_CONTROL
        return pattern.search(text) is not None
    return any(escaped for _, escaped in _pieces(text, len(text), multiline)) or (
        multiline and "\r\n" in text
    )


class LiteralConsole(Console):
    """A Rich console for output that carries other people's text: strings are not markup nor
    emoji codes (`[/]` and `:x:` print as typed), and every segment written has its control
    characters escaped (newlines and tabs aside: they are the layout), whatever the caller
    built. Styling is ours: Rich adds it after this, from styles, never from the text."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("markup", False)
        options.setdefault("emoji", False)
        options.setdefault("highlight", False)
        super().__init__(**options)

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            text, style, control = segment
            if control is None and has_hidden(text, multiline=True):
                yield Segment(visible(text, limit=None, multiline=True), style)
            else:
                yield segment
