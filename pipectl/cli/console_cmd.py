"""`pipectl` with no verb: the console (placeholder until the console lands)."""

from __future__ import annotations

import argparse

from pipectl.cli.common import CliError


def open_console(args: argparse.Namespace) -> int:
    del args
    raise CliError("the console is not built yet; use the one-shot verbs (pipectl --help)")
