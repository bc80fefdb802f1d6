"""`pipectl` with no verb: the console. Textual is imported here, lazily, so the one-shot verbs
never load it."""

from __future__ import annotations

import argparse
import logging

from pipectl.cli.common import EXIT_OK, load, request_telemetry


def open_console(args: argparse.Namespace) -> int:
    """Run the console until the operator quits. An unreachable database is shown inside the
    console (with reconnects), not raised; a bad config is raised as ConfigError by `load`."""
    loaded = load(args)
    # Log records must not scribble over the screen; the console shows what matters itself.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.CRITICAL)
    from pipectl.console.app import PipectlApp

    # Requests filed here are traced (OTEL_* environment) unless the screen is all there is:
    # the console exporter has nowhere to write.
    tracing = request_telemetry(loaded.config, "pipectl-console", console=None)
    try:
        PipectlApp(loaded.config, read_only=bool(args.read_only), telemetry=tracing).run()
    finally:
        if tracing is not None:
            tracing.shutdown()
    return EXIT_OK
