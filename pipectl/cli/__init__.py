"""The `pipectl` command: the console with no verb, one-shot verbs for scripts.

Each verb group lives in its own module with a `register(subparsers)` function; handlers take
the parsed arguments and return the exit code. Expected failures (bad config, unreachable
database, refused request) become one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import asyncpg

from pipectl import __version__
from pipectl.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNKNOWN,
    CliError,
    connection_lost,
    run_handler,
)
from pipectl.config import ConfigError
from pipectl.db import DatabaseUnavailable
from pipectl.embedded import EmbeddedError
from pipectl.migrate import MigrationError
from pipectl.resilience import describe, describe_error
from pipectl.safetext import BLOCK, visible

from . import (
    agent_cmd,
    check_cmd,
    config_cmd,
    db_cmd,
    demo_cmd,
    demo_fault_cmd,
    lineage_cmd,
    ops_cmd,
)

VERB_MODULES = [
    ops_cmd,
    lineage_cmd,
    check_cmd,
    demo_cmd,
    demo_fault_cmd,
    config_cmd,
    db_cmd,
    agent_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipectl",
        description="Ops console and monitoring agent for the APES analytics pipeline. "
        "With no verb, opens the console.",
    )
    parser.add_argument("--version", action="version", version=f"pipectl {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="config file (default: $PIPECTL_CONFIG, "
        "./pipectl.toml, ~/.config/pipectl/config.toml, /etc/pipectl/config.toml)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="console: hide and refuse every write action"
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        module.register(subparsers)
    _accept_config_anywhere(parser)
    return parser


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """`pipectl agent --config F` works as well as `pipectl --config F agent`."""
    for action in parser._subparsers._actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--config" not in sub._option_string_actions:
                    sub.add_argument(
                        "--config",
                        "-c",
                        metavar="FILE",
                        default=argparse.SUPPRESS,
                        help="config file (see pipectl --help)",
                    )
                _accept_config_anywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (argparse said which)
        return exc.code if isinstance(exc.code, int) else EXIT_FAIL
    if args.verb is None:
        from . import console_cmd

        args.handler = console_cmd.open_console
    try:
        return run_handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            _error(str(problem))
        return EXIT_FAIL
    except EmbeddedError as exc:
        # The message ends with the server's log, lines and all.
        _error(f"pipectl: {exc}", multiline=True)
        return EXIT_UNKNOWN
    except DatabaseUnavailable as exc:
        _error(f"pipectl: {exc}")
        return EXIT_UNKNOWN
    except (MigrationError, CliError) as exc:
        _error(f"pipectl: {exc}")
        return getattr(exc, "exit_code", EXIT_FAIL)
    except asyncpg.PostgresError as exc:
        if connection_lost(exc):
            return _lost(exc)
        # Never str(exc): asyncpg appends the DETAIL, which quotes the rows involved.
        _error(f"pipectl: database error: {describe_error(exc)}")
        return EXIT_FAIL
    except BrokenPipeError:
        # `pipectl history | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_OK
    except (asyncpg.InterfaceError, ConnectionError) as exc:
        if not connection_lost(exc):
            raise
        return _lost(exc)
    except KeyboardInterrupt:
        print("pipectl: interrupted", file=sys.stderr)
        return 130


def _lost(exc: BaseException) -> int:
    reason = visible(describe(exc))
    print(f"pipectl: lost the connection to the database: {reason}", file=sys.stderr)
    return EXIT_UNKNOWN


def _error(message: str, *, multiline: bool = False) -> None:
    """An expected failure on stderr. Messages quote names, values and server messages that
    others wrote: one line each (a newline in them is shown, never a new line), escapes
    instead of control characters."""
    print(visible(message, limit=BLOCK, multiline=multiline), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
