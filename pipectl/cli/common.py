"""What the verbs share: exit codes, config loading, output helpers.

Imported by `pipectl --help` and by every verb's module, so it imports nothing heavy at the
top (asyncpg, pydantic, rich, the check kinds): each helper imports what it needs when called
(docs/DEVELOPING.md, "A CLI that starts at once").
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from pipectl.durations import MAX_DURATION, DurationError, parse_duration

if TYPE_CHECKING:
    from pipectl.config import Config, LoadedConfig
    from pipectl.configfile import ConfigSource
    from pipectl.db import ConnectConfig
    from pipectl.safetext import LiteralConsole
    from pipectl.telemetry import Telemetry

EXIT_OK = 0
EXIT_WARN = 1
EXIT_FAIL = 2
EXIT_UNKNOWN = 3  # could not find out (database unreachable): Nagios' UNKNOWN


class CliError(Exception):
    """An expected failure of a verb; printed as `pipectl: <message>`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


Handler = Callable[[argparse.Namespace], Any]

_freeze_start_up = False


def freeze_start_up() -> None:
    """Make `start_up` blocks run without the cyclic collector: for the `pipectl` process
    itself (main() with no argv), never for a test calling main(argv) in its own process."""
    global _freeze_start_up
    _freeze_start_up = True


@contextmanager
def start_up() -> Iterator[None]:
    """A part of the `pipectl` process's start-up that makes objects kept to the end: the
    verb's imports, its validated config. The cyclic collector is off while it runs and what
    it made is frozen after it (gc.freeze: never traversed again). Collections during start-up
    find nothing to free and took ~10 ms of a `pipectl check`'s CPU (bench/FINDINGS.md). The
    collector is on again when the block ends, however it ends: a long-running verb (the agent,
    the console) collects as usual from there."""
    if not _freeze_start_up or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


# Server-side ends of a session: shutdown (fast or crash), not accepting, connection failures.
_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006"})


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database connection went away mid-verb:
    the server shut down or crashed, the socket was reset or closed. The verb could not
    find out what it was asked (exit 3), which is not an error of the request (exit 2)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _lost_one(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _lost_one(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError):
        return True
    # Only a verb that imported asyncpg can have met its errors: never import it to find out.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return getattr(exc, "sqlstate", None) in _LOST_SQLSTATES
    if isinstance(exc, asyncpg.ConnectionDoesNotExistError):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def text_argument(limit: int) -> Callable[[str], str]:
    """An argparse type for text that goes to the database: valid UTF-8 (bytes the terminal
    could not decode reach Python as surrogates, which no database accepts) and at most
    `limit` characters, refused with a message instead of a database error."""

    def parse(text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError("not valid UTF-8 text") from None
        if len(text) > limit:
            raise argparse.ArgumentTypeError(f"too long ({len(text)} characters; at most {limit})")
        return text

    return parse


def int_argument(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type for a whole number from `minimum` to `maximum`: anything else (text,
    a fraction, thousands of digits) is refused by argparse, naming the option (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {minimum} to {maximum}, got {_shown(text)}"
            ) from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be from {minimum} to {maximum}, got {_shown(text)}"
            )
        return value

    return parse


def float_argument(
    *, above: float | None = None, at_most: float | None = None, unit: str = ""
) -> Callable[[str], float]:
    """An argparse type for a finite number, more than `above` and at most `at_most`:
    NaN and infinities (which float() accepts, and which compare false with any bound)
    are refused like text is."""
    suffix = f" {unit}" if unit else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {_shown(text)}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be more than {above:g}{suffix}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most:g}{suffix}")
        return value

    return parse


def duration_argument(maximum: timedelta = MAX_DURATION) -> Callable[[str], timedelta]:
    """An argparse type for a positive duration ("30m", "2h") of at most `maximum`, read by
    the one duration parser (pipectl.durations)."""

    def parse(text: str) -> timedelta:
        try:
            value = parse_duration(text, maximum=maximum)
        except DurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value <= timedelta(0):
            raise argparse.ArgumentTypeError("must be longer than zero")
        return value

    return parse


def _shown(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


# Limits of the requests table (target 1..200, reason up to 2000 characters).
NAME_ARGUMENT = text_argument(200)
REASON_ARGUMENT = text_argument(2000)


def run_handler(args: argparse.Namespace) -> int:
    """Call a verb's handler; coroutine handlers get their own event loop."""
    handler: Handler = args.handler
    result = handler(args)
    if isinstance(result, Coroutine):
        import asyncio

        result = asyncio.run(result)
    return int(result or 0)


def load(args: argparse.Namespace, *, require_file: bool = False) -> LoadedConfig:
    with start_up():
        import pipectl.checks  # noqa: F401  (registers the check kinds: configs naming them parse)
        from pipectl.config import load_config

        return load_config(getattr(args, "config", None), require_file=require_file)


def connect_config(args: argparse.Namespace) -> ConnectConfig:
    """What a verb that only connects needs of the config (its [database] section), at once
    when the config file and the environment overriding it validated before
    (pipectl.configcache). Otherwise the config is validated whole, as `load` does (a bad one
    raises the same ConfigError whatever the verb), and remembered."""
    from pipectl.configfile import read_source

    return known_config(read_source(getattr(args, "config", None)))


def known_config(source: ConfigSource, environ: Mapping[str, str] | None = None) -> ConnectConfig:
    """`source` as remembered valid, else validated whole (check kinds registered) and
    remembered: `connect_config` for a config already read."""
    from pipectl import configcache

    known = configcache.lookup(source, environ)
    if known is not None:
        return known
    with start_up():
        import pipectl.checks  # noqa: F401  (registers the check kinds: configs naming them parse)
        from pipectl.config import validate_source

        config = validate_source(source, environ).config
    configcache.remember(source, config, environ)
    return config


def tracing_requested() -> bool:
    """Whether an OTEL_* variable is set: only then may a verb load OpenTelemetry."""
    return any(name.startswith("OTEL_") for name in os.environ)


def request_telemetry(config: Config, service: str, console: TextIO | None) -> Telemetry | None:
    """Tracing for a verb that files requests, from the OTEL_* environment; a setting that
    cannot be honoured is an error (exit 2) naming the variable, never silently ignored.
    None without any OTEL_* variable: nothing would be exported, so the SDK stays unloaded
    and the request carries no trace context (the agent's span starts its trace)."""
    if not tracing_requested():
        return None
    from pipectl.telemetry import TelemetryError, build

    try:
        return build(service, config.agent.environment, console=console)
    except TelemetryError as exc:
        raise CliError(f"OpenTelemetry: {exc}") from None


PIPE_WIDTH = 100_000
"""Columns of output that is not a terminal (`pipectl status | cat`, a file, a script):
as wide as any line needs, so a table never narrows a column nor cuts or folds a word."""


def interactive(stderr: bool = False) -> bool:
    """Whether output goes to a terminal (someone reads it at its width)."""
    return (sys.stderr if stderr else sys.stdout).isatty()


def cell_limit(stderr: bool = False) -> int:
    """How much of a database text a table cell shows: CELL characters on a terminal, where
    the table must fit the screen; a whole line's worth (LINE) when the output is piped or
    saved, since `grep` and the next reader need the words, not an ellipsis. Not more: a
    table has dozens of cells that anyone with a login can fill with a megabyte each."""
    from pipectl.safetext import CELL, LINE

    return CELL if interactive(stderr) else LINE


def console(stderr: bool = False) -> LiteralConsole:
    """Rich console: colour only on a terminal, and never with NO_COLOR set. Output that is
    not a terminal is plain and full width (PIPE_WIDTH), so names and messages are never cut
    or folded. Strings are printed as they are, never as markup, with control characters
    escaped (database text is data); styles come from `Text` and `Table` arguments only."""
    from pipectl.safetext import LiteralConsole

    width = None if interactive(stderr) else PIPE_WIDTH
    return LiteralConsole(
        stderr=stderr,
        no_color="NO_COLOR" in os.environ,
        soft_wrap=False,
        width=width,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def print_json(data: Any) -> None:
    """Stable JSON for scripts: ISO 8601 times, keys in a fixed order."""
    json.dump(data, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")
