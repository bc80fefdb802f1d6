"""Faults from another process: JSON messages on the `pipectl_demo` NOTIFY channel.

    {"action": "inject", "fault": "stall", "duration_s": 120, "params": {"table": "user_feedback"}}
    {"action": "clear", "fault": null}

A running simulator LISTENs on the channel; `send_fault` / `send_clear` (and `pipectl fault`)
publish. Messages are checked here; whatever does not parse is ignored by the listener with
a log line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from pipectl.db import resolve, unavailable
from pipectl.simulator import faults

CHANNEL = "pipectl_demo"
LISTENER_APPLICATION = "pipectl-simulator-control"
_MAX_SECONDS = 366 * 86400


class ControlError(ValueError):
    """A control message that cannot be used; the message says why."""


@dataclass(frozen=True)
class ControlMessage:
    action: str  # "inject" | "clear"
    fault: str | None
    duration: timedelta | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body: dict[str, Any] = {"action": self.action, "fault": self.fault}
        if self.action == "inject":
            body["duration_s"] = self.duration.total_seconds() if self.duration else None
            body["params"] = self.params
        return json.dumps(body)


def _duration(value: Any) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"duration_s must be a number of seconds or null, got {value!r}")
    if not 0 < value <= _MAX_SECONDS:
        raise ControlError(f"duration_s must be positive (and under a year), got {value!r}")
    return timedelta(seconds=value)


def parse_message(payload: str) -> ControlMessage:
    """Read one NOTIFY payload; raise ControlError saying what is wrong with it."""
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ControlError(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ControlError("expected a JSON object")
    action = body.get("action")
    fault = body.get("fault")
    if action == "clear":
        if fault is not None:
            try:
                faults.validate_name(fault)
            except faults.FaultError as exc:
                raise ControlError(str(exc)) from None
        return ControlMessage("clear", fault)
    if action != "inject":
        raise ControlError(f"action must be 'inject' or 'clear', got {action!r}")
    params = body.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ControlError(f"params must be an object, got {params!r}")
    try:
        normalized = faults.validate(fault, params)
    except faults.FaultError as exc:
        raise ControlError(str(exc)) from None
    assert isinstance(fault, str)
    return ControlMessage("inject", fault, _duration(body.get("duration_s")), normalized)


async def _publish(dsn: str | None, message: ControlMessage) -> int:
    """NOTIFY the message; return how many simulators listen on this database."""
    target = resolve(dsn)
    try:
        conn = await asyncpg.connect(
            target.dsn,
            timeout=target.connect_timeout or 10,
            server_settings={
                **target.server_settings,
                "application_name": target.application("pipectl fault"),
            },
        )
    except (
        OSError,
        TimeoutError,
        ValueError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        raise unavailable(target, exc) from exc
    try:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, message.to_json())
        listeners = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            LISTENER_APPLICATION,
        )
        return int(listeners)
    finally:
        await conn.close()


async def send_fault(
    dsn: str | None,
    fault: str,
    duration: timedelta | None = None,
    params: Mapping[str, Any] | None = None,
) -> int:
    """Ask the simulators listening on this database to inject `fault`.

    Validates first (raises FaultError). Returns the number of simulators listening (0 means
    nobody heard it). `dsn=None` uses the libpq environment.
    """
    normalized = faults.validate(fault, params)
    if duration is not None and duration.total_seconds() <= 0:
        raise faults.FaultError("duration must be positive")
    return await _publish(dsn, ControlMessage("inject", fault, duration, normalized))


async def send_clear(dsn: str | None, fault: str | None = None) -> int:
    """Ask the listening simulators to clear `fault` (None: every fault)."""
    if fault is not None:
        faults.validate_name(fault)
    return await _publish(dsn, ControlMessage("clear", fault))
