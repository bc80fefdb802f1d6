"""Logging for pipectl processes: JSON lines for journald, readable text on a terminal.

JSON lines carry `trace_id` and `span_id` when logged inside a span (a step run, a check,
a request), so a log line leads to its trace. Under journald (stderr is the stream named by
$JOURNAL_STREAM) each line starts with its syslog priority, `<3>` for an error, which
journald takes as the entry's priority: `journalctl -p warning` then works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace

from pipectl.safetext import BLOCK, visible

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

# syslog(3) priorities by logging level (journald reads a leading "<N>").
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two take the more severe)."""
    for level, priority in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become top-level keys; the current span's
    trace and span ids when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            payload["trace_id"] = f"{context.trace_id:032x}"
            payload["span_id"] = f"{context.span_id:016x}"
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class JournalPrefix(logging.Formatter):
    """`<N>` before what `inner` formats: the record's syslog priority, for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>{self.inner.format(record)}"


def under_journald(stream: Any) -> bool:
    """Whether `stream` is the journal stream systemd connected ($JOURNAL_STREAM is
    "device:inode" of it; a child whose stderr was redirected elsewhere inherits the
    variable, so the descriptor itself is compared)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


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
    formatter: logging.Formatter = JsonFormatter() if use_json else TextFormatter()
    if under_journald(out):
        formatter = JournalPrefix(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
