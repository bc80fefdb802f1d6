"""What the verbs share: exit codes, config loading, output helpers."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Console

import pipectl.checks  # noqa: F401  (registers the check kinds, so configs naming them parse)
from pipectl.config import LoadedConfig, load_config

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


# Limits of the requests table (target 1..200, reason up to 2000 characters).
NAME_ARGUMENT = text_argument(200)
REASON_ARGUMENT = text_argument(2000)


def run_handler(args: argparse.Namespace) -> int:
    """Call a verb's handler; coroutine handlers get their own event loop."""
    handler: Handler = args.handler
    result = handler(args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


def load(args: argparse.Namespace, *, require_file: bool = False) -> LoadedConfig:
    return load_config(getattr(args, "config", None), require_file=require_file)


def console(stderr: bool = False) -> Console:
    """Rich console: colour only on a terminal, and never with NO_COLOR set. Piped output
    gets wide lines instead of the 80 columns rich assumes, so names are not cut."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(160, int(os.environ.get("COLUMNS", "0") or 0))
    return Console(
        stderr=stderr,
        no_color="NO_COLOR" in os.environ,
        highlight=False,
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
