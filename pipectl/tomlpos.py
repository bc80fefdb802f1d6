"""Line numbers for the keys of a TOML document.

tomllib gives values without positions, and config errors must say `file:line`. This scanner
walks the text once and records the line where each key path is defined, with array-of-table
entries indexed the way tomllib indexes them. It only needs to be right about documents that
tomllib accepted, so it tracks exactly the syntax that can hide a key: strings, multi-line
strings and arrays spanning lines.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE_KEY = r"[A-Za-z0-9_-]+"
_QUOTED_KEY = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY_PART = rf"(?:{_BARE_KEY}|{_QUOTED_KEY})"
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_KEY_LINE = re.compile(rf"^\s*({_DOTTED_KEY})\s*=")
_TABLE_LINE = re.compile(rf"^\s*\[\s*({_DOTTED_KEY})\s*\]")
_ARRAY_TABLE_LINE = re.compile(rf"^\s*\[\[\s*({_DOTTED_KEY})\s*\]\]")
_INLINE_KEY = re.compile(rf"({_DOTTED_KEY})\s*=")


def _split_key(dotted: str) -> list[str]:
    parts = re.findall(_KEY_PART, dotted)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _strip_strings(line: str) -> tuple[str, str | None]:
    """Blank out string contents; return the line and an unterminated multi-line opener."""
    out: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            quote = line[i : i + 3]
            end = line.find(quote, i + 3)
            if end == -1:
                return "".join(out) + '""', quote
            out.append('""')
            i = end + 3
            continue
        if ch in "\"'":
            j = i + 1
            while j < len(line) and line[j] != ch:
                j += 2 if ch == '"' and line[j] == "\\" else 1
            out.append(line[i : j + 1] if _looks_like_key(line, j + 1) else '""')
            i = j + 1
            continue
        out.append(ch)
        i += 1
    return "".join(out), None


def _looks_like_key(line: str, after: int) -> bool:
    rest = line[after:].lstrip()
    return rest.startswith("=") or rest.startswith(".") or rest.startswith("]")


def locate_keys(text: str) -> dict[Path, int]:
    """Map every key path in `text` to the 1-based line that defines it."""
    lines: dict[Path, int] = {}
    array_counts: dict[tuple[str | int, ...], int] = {}
    table: Path = ()
    open_multiline: str | None = None
    bracket_depth = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if open_multiline is not None:
            end = raw.find(open_multiline)
            if end == -1:
                continue
            raw = raw[end + 3 :]
            open_multiline = None
            clean, open_multiline = _strip_strings(raw)
            bracket_depth += clean.count("[") - clean.count("]")
            continue
        clean, open_multiline = _strip_strings(raw)
        if bracket_depth > 0:
            bracket_depth += clean.count("[") - clean.count("]")
            continue
        if match := _ARRAY_TABLE_LINE.match(clean):
            base = _resolve(table=(), parts=_split_key(match.group(1)), counts=array_counts)
            index = array_counts.get(base, -1) + 1
            array_counts[base] = index
            table = (*base, index)
            lines.setdefault(base, number)
            lines[table] = number
            continue
        if match := _TABLE_LINE.match(clean):
            table = _resolve(table=(), parts=_split_key(match.group(1)), counts=array_counts)
            lines.setdefault(table, number)
            continue
        if match := _KEY_LINE.match(clean):
            path = (*table, *_split_key(match.group(1)))
            lines[path] = number
            value = clean[match.end() :]
            _record_inline(path, value, number, lines)
            bracket_depth += value.count("[") - value.count("]")
    return lines


def _resolve(table: Path, parts: list[str], counts: dict[Path, int]) -> Path:
    """Header paths walk through arrays of tables into their latest entry, as TOML does."""
    path: Path = table
    for part in parts:
        path = (*path, part)
        if path in counts and part != parts[-1]:
            path = (*path, counts[path])
    return path


def _record_inline(path: Path, value: str, number: int, lines: dict[Path, int]) -> None:
    """Keys of a one-line inline table share the line of their parent key."""
    brace = value.find("{")
    if brace == -1:
        return
    for match in _INLINE_KEY.finditer(value[brace + 1 :]):
        lines.setdefault((*path, *_split_key(match.group(1))), number)


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of the longest prefix of `path` that the document defines."""
    for end in range(len(path), 0, -1):
        found = lines.get(path[:end])
        if found is not None:
            return found
    return None
