"""The `pipectl` command: the console with no verb, one-shot verbs for scripts.

Each verb group lives in its own module with a `register(subparsers)` function; handlers take
the parsed arguments and return the exit code. Expected failures (bad config, unreachable
database, refused request) become one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import os
import sys
from collections.abc import Collection, Sequence
from types import ModuleType
from typing import Any

from pipectl import __version__
from pipectl.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNKNOWN,
    CliError,
    connection_lost,
    freeze_start_up,
    run_handler,
    start_up,
)

# Every verb in `pipectl --help` order: the module (in pipectl.cli) whose `register` adds it,
# and its line in that listing. `pipectl --help` is built from this table alone, and a verb
# imports only its own module, so no verb pays for another's imports (asyncpg, pydantic, redis,
# OpenTelemetry, Textual: see docs/DEVELOPING.md, "A CLI that starts at once").
# tests/test_cli_start.py checks it against what the modules register.
VERBS: dict[str, tuple[str, str]] = {
    "status": ("ops_cmd", "pipeline health; exit 0 ok, 1 warnings, 2 failures"),
    "history": ("ops_cmd", "recent runs (or requests, or events), newest first"),
    "rerun": ("ops_cmd", "ask the agent to run a step now"),
    "publish": (
        "ops_cmd",
        "publish a held step anyway: refresh it once more without enforcing its gates",
    ),
    "pause": ("ops_cmd", "stop a step's scheduled runs"),
    "resume": ("ops_cmd", "undo pause"),
    "silence": ("ops_cmd", "keep a check recording but raising no alert, for a while"),
    "unsilence": ("ops_cmd", "end a silence now"),
    "lineage": (
        "lineage_cmd",
        "what reads what: relations (from the catalog), steps and checks, as a tree",
    ),
    "why": (
        "lineage_cmd",
        "why a relation, step or check is not ok: its root cause and impact",
    ),
    "audit": (
        "audit_cmd",
        "compare a step's published summary with a full recompute of its defining query;"
        " exit 0 equal, 1 different, 2 could not audit",
    ),
    "check": (
        "check_cmd",
        "run checks now with the agent's code; exit 0 ok, 1 warn, 2 fail or error",
    ),
    "demo": (
        "demo_cmd",
        "run everything locally: embedded PostgreSQL and Valkey, a live APES simulator, "
        "the agent and the console",
    ),
    "fault": (
        "demo_fault_cmd",
        "inject or clear faults in a running demo simulator (pipectl demo)",
    ),
    "simulate": (
        "simulate_cmd",
        "run the APES simulator (history, live traffic, faults) against a database you "
        "name, e.g. a staging copy",
    ),
    "config": ("config_cmd", "validate or show the configuration"),
    "db": ("db_cmd", "manage pipectl's schema in the database"),
    "agent": ("agent_cmd", "run the agent: refresh summaries, run checks, serve metrics"),
}


def verb_module(name: str) -> ModuleType:
    """pipectl.cli.<name>, imported now."""
    return importlib.import_module(f"{__name__}.{name}")


class Parser(argparse.ArgumentParser):
    """argparse with a suggestion for a mistyped choice: `pipectl stauts` answers
    "invalid choice: 'stauts' (did you mean 'status'?)" before listing the choices. The
    subparsers are built with the same class, so a mistyped `pipectl fault injetc` or an
    option's choice gets the same help."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices or not isinstance(value, str):
            super()._check_value(action, value)
            return
        names = [str(choice) for choice in choices]
        close = difflib.get_close_matches(value, names, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        listing = ", ".join(repr(name) for name in names)
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r}{hint}; choose from {listing}"
        )


def build_parser(verbs: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `pipectl` parser. With `verbs`, only their modules are imported and register their
    verbs in full; every other verb is listed by its name and help line from `VERBS`, which is
    all `pipectl --help` shows of it. None: every module, every verb in full."""
    parser = Parser(
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
    wanted = {module for verb, (module, _) in VERBS.items() if verbs is None or verb in verbs}
    registered: set[str] = set()
    for verb, (module, text) in VERBS.items():
        if module not in wanted:
            subparsers.add_parser(verb, help=text)
        elif module not in registered:
            verb_module(module).register(subparsers)
            registered.add(module)
    _accept_config_anywhere(parser)
    return parser


def _verb_of(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The verb `argv` names: its first word that is neither an option nor an option's value
    (only the top-level options are before the verb; a long option may be abbreviated, as
    argparse allows)."""
    options = {
        option: action.nargs != 0 for action in parser._actions for option in action.option_strings
    }

    def takes_value(word: str) -> bool:
        if word in options:
            return options[word]
        matches = [o for o in options if word.startswith("--") and o.startswith(word)]
        return len(matches) == 1 and options[matches[0]]

    words = iter(argv)
    for word in words:
        if takes_value(word):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for this command line: its verb's module only (the console and `--help`
    need none); every module when the word is no verb in `VERBS`, so argparse names the
    choices and a verb missing from the table still works."""
    verb = _verb_of(build_parser(verbs=()), argv)
    if verb is None:
        return build_parser(verbs=())
    return build_parser(verbs={verb} if verb in VERBS else None)


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


def _raised(module: str, name: str) -> Any:
    """`(module.name,)` if its module was imported, else `()` (which an `except` clause never
    matches): what a verb never imported it cannot have raised, and reporting a failure must
    not import asyncpg or pydantic for the asking. A tuple either way, for `except (*a, *b)`."""
    loaded = sys.modules.get(module)
    return () if loaded is None else (getattr(loaded, name),)


def main(argv: Sequence[str] | None = None) -> int:
    """The `pipectl` command (`sys.exit(main())`), or a verb run in-process with `argv`."""
    if argv is None:
        # pydantic looks for plugins when it builds its first model: the entry points of every
        # installed distribution, ~4 ms of a `pipectl check` here, more in a big environment.
        # pipectl uses none; a value the user set wins.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
        freeze_start_up()
    code = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:
        # The process ends next. Its teardown collects the garbage among everything the
        # imports made (pydantic's schemas, the check kinds' models): 40-60 ms of a
        # `pipectl check`'s exit (bench/FINDINGS.md). Frozen objects are left to the operating
        # system; atexit handlers (logging, telemetry) still run.
        gc.freeze()
    return code


def _main(argv: Sequence[str]) -> int:
    with start_up():  # the verb's module and what it imports
        parser = parser_for(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (argparse said which)
        return exc.code if isinstance(exc.code, int) else EXIT_FAIL
    if args.verb is None:
        from . import console_cmd

        args.handler = console_cmd.open_console
    try:
        return run_handler(args)
    except _raised("pipectl.configfile", "ConfigError") as exc:
        for problem in exc.problems:
            _error(str(problem))
        return EXIT_FAIL
    except _raised("pipectl.embedded", "EmbeddedError") as exc:
        # The message ends with the server's log, lines and all.
        _error(f"pipectl: {exc}", multiline=True)
        return EXIT_UNKNOWN
    except _raised("pipectl.db", "DatabaseUnavailable") as exc:
        _error(f"pipectl: {exc}")
        return EXIT_UNKNOWN
    except (*_raised("pipectl.migrate", "MigrationError"), CliError) as exc:
        _error(f"pipectl: {exc}")
        return getattr(exc, "exit_code", EXIT_FAIL)
    except _raised("asyncpg", "PostgresError") as exc:
        if connection_lost(exc):
            return _lost(exc)
        # Never str(exc): asyncpg appends the DETAIL, which quotes the rows involved.
        from pipectl.resilience import describe_error

        _error(f"pipectl: database error: {describe_error(exc)}")
        return EXIT_FAIL
    except BrokenPipeError:
        # `pipectl history | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return EXIT_OK
    except (*_raised("asyncpg", "InterfaceError"), ConnectionError) as exc:
        if not connection_lost(exc):
            raise
        return _lost(exc)
    except KeyboardInterrupt:
        print("pipectl: interrupted", file=sys.stderr)
        return 130


def _lost(exc: BaseException) -> int:
    from pipectl.resilience import describe
    from pipectl.safetext import visible

    reason = visible(describe(exc))
    print(f"pipectl: lost the connection to the database: {reason}", file=sys.stderr)
    return EXIT_UNKNOWN


def _error(message: str, *, multiline: bool = False) -> None:
    """An expected failure on stderr. Messages quote names, values and server messages that
    others wrote: one line each (a newline in them is shown, never a new line), escapes
    instead of control characters."""
    from pipectl.safetext import BLOCK, visible

    print(visible(message, limit=BLOCK, multiline=multiline), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
