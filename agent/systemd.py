"""systemd's notify protocol (Type=notify): a datagram to $NOTIFY_SOCKET, no library needed."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from pipectl.safetext import visible

log = logging.getLogger(__name__)

# systemctl status shows one line of it; longer reasons are in the log.
STATUS_LIMIT = 400


def notify(*lines: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=serving"); False when not run by systemd. Each
    line stays one line, control characters escaped: a reason quoting the config or a
    server's message (a STATUS=) can never add an assignment of its own."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    payload = "\n".join(visible(line, limit=STATUS_LIMIT) for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)
        return False
    return True


def notify_reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time it began: systemd 253+ (Type=notify-reload)
    requires MONOTONIC_USEC to tell this reload from an earlier one; older ones ignore it.
    READY=1 ends the reload."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, when systemd asked this process for watchdog pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None


async def watchdog_loop(interval: float) -> None:
    """Ping from the event loop itself: a blocked loop stops the pings and systemd restarts us."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
