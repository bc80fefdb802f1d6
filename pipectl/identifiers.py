"""Names that reach SQL: parsed strictly from config, quoted only after the catalog vouched."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)


class IdentifierError(ValueError):
    """An identifier from config that is not a plain or properly quoted SQL name."""


def quote_ident(name: str) -> str:
    """Quote one SQL identifier the way PostgreSQL's quote_ident() does, always."""
    if "\x00" in name:
        raise IdentifierError("identifiers cannot contain NUL bytes")
    return '"' + name.replace('"', '""') + '"'


def _parse_part(text: str, whole: str) -> tuple[str, int]:
    if text.startswith('"'):
        match = _QUOTED.match(text)
        if match is None:
            raise IdentifierError(f"unterminated quoted identifier in {whole!r}")
        value = match.group(1).replace('""', '"')
        if len(value.encode()) > 63:
            raise IdentifierError(f"identifier longer than 63 bytes in {whole!r}")
        return value, match.end()
    match = _BARE.match(text)
    if match is None:
        raise IdentifierError(
            f"{whole!r} is not a table name: use schema.table with letters, digits and _ "
            'or a "double-quoted" identifier'
        )
    if len(match.group(0)) == 63 and len(text) > 63 and text[63] not in ".":
        raise IdentifierError(f"identifier longer than 63 characters in {whole!r}")
    # Unquoted names fold to lower case in PostgreSQL; keep that meaning.
    return match.group(0).lower(), match.end()


@dataclass(frozen=True, order=True)
class Relation:
    """A schema-qualified relation name as PostgreSQL would resolve it."""

    schema: str
    name: str

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> Relation:
        if not isinstance(text, str) or not text.strip():
            raise IdentifierError("expected a table name such as 'public.rule_performance'")
        rest = text.strip()
        first, used = _parse_part(rest, text)
        rest = rest[used:]
        if not rest:
            return cls(default_schema, first)
        if not rest.startswith("."):
            raise IdentifierError(f"unexpected {rest[:40]!r} after {first!r} in {text!r}")
        second, used = _parse_part(rest[1:], text)
        if rest[1 + used :]:
            raise IdentifierError(f"unexpected {rest[1 + used :][:40]!r} in {text!r}")
        return cls(first, second)

    @property
    def sql(self) -> str:
        """Quoted form, safe to splice into SQL text."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def parse_column(text: str) -> str:
    """A single column name, folded like PostgreSQL folds it."""
    if not isinstance(text, str) or not text.strip():
        raise IdentifierError("expected a column name")
    value, used = _parse_part(text.strip(), text)
    if text.strip()[used:]:
        raise IdentifierError(f"{text!r} is not a single column name")
    return value


def check_name(text: str) -> str:
    """Step and check names: short, printable, safe as metric labels and lock keys."""
    if not _NAME.match(text):
        raise IdentifierError(
            f"{text!r} is not a valid name: start with a letter, then letters, digits, "
            "'_', '-' or '.', at most 63 characters"
        )
    return text
