"""A PostgreSQL lexer just good enough to read a step's SQL statement by statement.

The agent runs a `sql` step inside one transaction with `statement_timeout`, `lock_timeout` and
the step's advisory lock, all of which end with that transaction. A COMMIT in the step's SQL
ends it early: what follows runs with no timeout and outside the lock, and the run is still
recorded as succeeded. `step_sql_escapes` finds such statements so the config can refuse them.

Words are told apart from their look-alikes the way PostgreSQL's own lexer does: comments
(`--`, nested `/* */`), string literals ('', E'' with backslash escapes, B'', X'', N'', U&''),
quoted identifiers ("commit"), dollar-quoted bodies ($$...$$, $fn$...$fn$) and identifiers such
as commit_log are never taken for keywords. Statements end at `;` outside parentheses and
outside a `BEGIN ATOMIC ... END` function body, as psql splits them.

Out of reach of any text check: a procedure or a DO block that commits. PostgreSQL refuses
those inside a transaction block ("invalid transaction termination"), so such a run fails
instead of escaping its limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

TokenKind = Literal["word", "quoted", "string", "number", "symbol"]


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str
    """A word lowercased; a quoted identifier's or a string literal's content (a dollar-quoted
    body's too); a number, a $n parameter or a symbol as written."""
    line: int
    """1-based line of the SQL text where the token starts."""


class SqlScanError(ValueError):
    """The text ends inside a literal, a quoted identifier or a comment."""


_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CONT = _IDENT_START | frozenset("0123456789$")
_PREFIXED_STRINGS = frozenset({"b", "x", "n"})


def _is_ident_start(char: str) -> bool:
    return char in _IDENT_START or ord(char) >= 0x80


def _is_ident_cont(char: str) -> bool:
    return char in _IDENT_CONT or ord(char) >= 0x80


class _Lexer:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.pos = 0
        self._counted = 0
        self._line = 1

    @property
    def line(self) -> int:
        """The line of `pos`, counted on from the last time (pos only moves forward)."""
        self._line += self.sql.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self._line

    def peek(self, offset: int = 0) -> str:
        at = self.pos + offset
        return self.sql[at] if at < len(self.sql) else ""

    def tokens(self) -> Iterator[Token]:
        sql = self.sql
        while self.pos < len(sql):
            char = sql[self.pos]
            if char.isspace():
                self.pos += 1
            elif sql.startswith("--", self.pos):
                end = sql.find("\n", self.pos)
                self.pos = len(sql) if end < 0 else end
            elif sql.startswith("/*", self.pos):
                self._block_comment()
            elif char == "'":
                yield self._string(backslashes=False)
            elif char == '"':
                yield self._quoted_identifier()
            elif char == "$" and (body := self._dollar_quoted()) is not None:
                yield body
            elif _is_ident_start(char):
                yield self._word_or_prefixed_string()
            elif char.isdigit() or (char == "$" and self.peek(1).isdigit()):
                line, start = self.line, self.pos
                self.pos += 1
                while self.pos < len(sql) and (sql[self.pos].isalnum() or sql[self.pos] in "._"):
                    self.pos += 1
                yield Token("number", sql[start : self.pos], line)
            else:
                yield Token("symbol", char, self.line)
                self.pos += 1

    def _block_comment(self) -> None:
        start, depth = self.line, 0
        while self.pos < len(self.sql):
            if self.sql.startswith("/*", self.pos):
                depth += 1
                self.pos += 2
            elif self.sql.startswith("*/", self.pos):
                depth -= 1
                self.pos += 2
                if depth == 0:
                    return
            else:
                self.pos += 1
        raise SqlScanError(f"a /* comment opened on line {start} is never closed")

    def _string(self, *, backslashes: bool) -> Token:
        """From an opening quote; '' is a quote, and with E'' so is \\'."""
        line = self.line
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.sql):
            char = self.sql[self.pos]
            if backslashes and char == "\\":
                out.append(self.peek(1))
                self.pos += 2
            elif char == "'" and self.peek(1) == "'":
                out.append("'")
                self.pos += 2
            elif char == "'":
                self.pos += 1
                return Token("string", "".join(out), line)
            else:
                out.append(char)
                self.pos += 1
        raise SqlScanError(f"a string literal opened on line {line} is never closed")

    def _quoted_identifier(self) -> Token:
        line = self.line
        end = self.pos + 1
        while True:
            end = self.sql.find('"', end)
            if end < 0:
                raise SqlScanError(f"a quoted identifier opened on line {line} is never closed")
            if self.sql.startswith('""', end):
                end += 2
                continue
            break
        text = self.sql[self.pos + 1 : end].replace('""', '"')
        self.pos = end + 1
        return Token("quoted", text, line)  # never a keyword, whatever it spells

    def _dollar_quoted(self) -> Token | None:
        """$tag$...$tag$ (tag empty or an identifier without '$'); None when not one."""
        end = self.pos + 1
        while end < len(self.sql) and self.sql[end] != "$":
            if not (
                _is_ident_start(self.sql[end]) or (end > self.pos + 1 and self.sql[end].isdigit())
            ):
                return None
            end += 1
        if end >= len(self.sql):
            return None
        delimiter = self.sql[self.pos : end + 1]
        line = self.line
        close = self.sql.find(delimiter, end + 1)
        if close < 0:
            raise SqlScanError(f"a {delimiter} quoted body opened on line {line} is never closed")
        text = self.sql[end + 1 : close]
        self.pos = close + len(delimiter)
        return Token("string", text, line)

    def _word_or_prefixed_string(self) -> Token:
        line = self.line
        start = self.pos
        while self.pos < len(self.sql) and _is_ident_cont(self.sql[self.pos]):
            self.pos += 1
        word = self.sql[start : self.pos].lower()
        if self.peek() == "'":
            if word == "e":
                return self._string(backslashes=True)
            if word in _PREFIXED_STRINGS:
                return self._string(backslashes=False)
        if word == "u" and self.peek() == "&" and self.peek(1) in "'\"":
            self.pos += 1
            return (
                self._string(backslashes=False) if self.peek() == "'" else self._quoted_identifier()
            )
        return Token("word", word, line)


def tokens(sql: str) -> Iterator[Token]:
    """The tokens of `sql`, comments and white space left out. Raises SqlScanError."""
    return _Lexer(sql).tokens()


def statements(sql: str) -> Iterator[list[Token]]:
    """`sql` split into statements (empty ones left out), as psql splits a script."""
    current: list[Token] = []
    parens = begin_depth = 0
    for token in tokens(sql):
        if token.kind == "symbol" and token.text == ";" and parens == 0 and begin_depth == 0:
            if current:
                yield current
            current = []
            continue
        current.append(token)
        if token.kind == "symbol":
            parens += {"(": 1, ")": -1}.get(token.text, 0)
        elif token.kind == "word":
            if token.text in ("begin", "case") and _defines_a_routine(current):
                begin_depth += 1
            elif token.text == "end" and begin_depth > 0:
                begin_depth -= 1
    if current:
        yield current


def _defines_a_routine(statement: list[Token]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: its BEGIN ATOMIC body holds semicolons."""
    words = [t.text for t in statement[:4] if t.kind == "word"]
    if words[:1] != ["create"]:
        return False
    if words[1:2] in (["function"], ["procedure"]):
        return True
    return words[1:3] == ["or", "replace"] and words[3:4] in (["function"], ["procedure"])


# Settings the agent fixes for each run (agent/runner.py); changing them lifts its limits.
RUN_LIMITS = {
    "statement_timeout": "set statement_timeout on the step instead",
    "lock_timeout": "set lock_timeout on the step instead",
    "client_connection_check_interval": "the agent sets it so that a lost agent's run stops",
}
_ENDS_THE_RUN = (
    "would end the run's transaction early: what follows would run without"
    " statement_timeout and outside the step lock"
)
_IS_CONTROL = (
    "is transaction control, which a step does not need: each run is one"
    " transaction, committed when the step succeeds"
)


@dataclass(frozen=True)
class Escape:
    """A statement that would escape the limits the agent puts around a run."""

    line: int
    what: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line} of the SQL: {self.what} {self.why}"


def step_sql_escapes(sql: str) -> list[Escape]:
    """Transaction control, and changes of the settings the agent fixes for a run, in the
    order they appear. Raises SqlScanError when `sql` cannot be read."""
    found: list[Escape] = []
    for statement in statements(sql):
        escape = _statement_escape(statement)
        if escape is not None:
            found.append(escape)
        found.extend(_set_config_calls(statement))
    return found


def _statement_escape(statement: list[Token]) -> Escape | None:
    first = statement[0]
    if first.kind != "word":
        return None
    words = [t.text if t.kind == "word" else "" for t in statement[:4]]
    second = words[1] if len(words) > 1 else ""
    line = first.line
    if first.text in ("commit", "end", "rollback", "abort"):
        return Escape(line, first.text.upper(), _ENDS_THE_RUN)
    if first.text == "prepare" and second == "transaction":
        return Escape(line, "PREPARE TRANSACTION", _ENDS_THE_RUN)
    if first.text in ("begin", "savepoint", "release"):
        return Escape(line, first.text.upper(), _IS_CONTROL)
    if first.text == "start" and second == "transaction":
        return Escape(line, "START TRANSACTION", _IS_CONTROL)
    if first.text == "set":
        name = _setting_after(statement[1:])
        if name in RUN_LIMITS:
            return Escape(
                line, f"SET {name}", f"would change a limit of the run; {RUN_LIMITS[name]}"
            )
    if first.text == "reset":
        name = _setting_after(statement[1:])
        if name == "all":
            return Escape(
                line, "RESET ALL", "would lift the statement_timeout and lock_timeout of the run"
            )
        if name in RUN_LIMITS:
            return Escape(
                line, f"RESET {name}", f"would change a limit of the run; {RUN_LIMITS[name]}"
            )
    return None


def _setting_after(rest: list[Token]) -> str | None:
    """The setting a SET or RESET names (after SESSION or LOCAL), case-folded as PostgreSQL
    looks settings up, quoted or not."""
    names = rest[:2]
    if names and names[0].kind == "word" and names[0].text in ("session", "local"):
        names = names[1:]
    if not names or names[0].kind not in ("word", "quoted"):
        return None
    return names[0].text.lower()


def _set_config_calls(statement: list[Token]) -> Iterator[Escape]:
    """set_config('statement_timeout', ...) written out; a name built at run time is out of
    reach, like a procedure that commits."""
    for index, token in enumerate(statement[:-2]):
        if token.kind != "word" or token.text != "set_config":
            continue
        paren, name = statement[index + 1], statement[index + 2]
        setting = name.text.lower() if name.kind == "string" else ""
        if paren.text == "(" and setting in RUN_LIMITS:
            yield Escape(
                token.line,
                f"set_config('{setting}', ...)",
                f"would change a limit of the run; {RUN_LIMITS[setting]}",
            )
