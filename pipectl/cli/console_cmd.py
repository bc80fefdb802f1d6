"""`pipectl` with no verb: the console. Textual is imported here, lazily, so the one-shot verbs
never load it."""

from __future__ import annotations

import argparse
import logging

from pipectl.cli.common import EXIT_OK, connect_config, load, request_telemetry, tracing_requested


def open_console(args: argparse.Namespace) -> int:
    """Run the console until the operator quits. An unreachable database is shown inside the
    console (with reconnects), not raised; a bad config is raised as ConfigError. The console
    reads only [database] of the config, so a config known valid is not validated again
    (`connect_config`), unless tracing asks for the whole of it."""
    traced = load(args).config if tracing_requested() else None
    config = traced or connect_config(args)
    # Log records must not scribble over the screen; the console shows what matters itself.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.CRITICAL)
    from pipectl.console.app import PipectlApp

    # Requests filed here are traced (OTEL_* environment) unless the screen is all there is:
    # the console exporter has nowhere to write.
    tracing = request_telemetry(traced, "pipectl-console", console=None) if traced else None
    try:
        PipectlApp(config, read_only=bool(args.read_only), telemetry=tracing).run()
    finally:
        if tracing is not None:
            tracing.shutdown()
    return EXIT_OK
