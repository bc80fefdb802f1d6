"""Logging for pipectl processes: JSON lines for journald, readable text on a terminal."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from pipectl.safetext import BLOCK, visible

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """One line per record for a terminal. Messages and `extra=` values quote text others
    wrote (a request's target, a server's error): control characters in them are escaped,
    so a newline cannot forge a record nor an escape sequence reach the terminal, and each
    is cut at 20,000 characters (JSON logs keep everything). A traceback's lines are
    indented under its record: only a record starts a line at the first column."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = visible(message, limit=BLOCK)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {
            k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        }
        if extras:
            text += " " + " ".join(f"{k}={visible(str(v), limit=BLOCK)}" for k, v in extras.items())
        return text

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(block: str) -> str:
    shown = visible(block, limit=None, multiline=True)
    return "\n".join("    " + line for line in shown.splitlines())


def setup_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "text"] = "auto",
    stream: Any = None,
) -> None:
    """Configure the root logger once per process (replaces earlier handlers)."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not getattr(out, "isatty", lambda: False)())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
