"""How soon a first `pipectl demo` shows something: Enter -> console, Enter -> first data on
the Overview, Enter -> first refreshed step, Enter -> history loaded, and how long quitting
takes. Prints figures; never fails on a number.

    .venv/bin/python -m bench.demo_start [--warmup S] [--code DIR] [--no-history-wait]

Runs `pipectl demo --fresh` in a pseudo-terminal of 80x24 (a temporary state directory),
reads the screen for the console ("Overview") and for a step name (the agent has published),
and asks the demo's database when the first run succeeded and when history older than two
hours is visible. `--code DIR` runs another checkout of pipectl (e.g. `git archive main`),
for a before/after on the same machine minutes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import asyncpg

MARKS = {"console": b"Overview", "first data": b"rule_effectiveness_summ"}
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


async def _probe(port: int) -> tuple[bool, bool]:
    """(a run has succeeded, history older than two hours is visible)."""
    try:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/apes", timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False, False
    try:
        ran = await conn.fetchval(
            "SELECT to_regclass('pipectl.runs') IS NOT NULL AND EXISTS"
            " (SELECT 1 FROM pipectl.runs WHERE status = 'succeeded')"
        )
        history = await conn.fetchval(
            "SELECT to_regclass('public.rule_performance') IS NOT NULL AND EXISTS"
            " (SELECT 1 FROM public.rule_performance"
            "  WHERE created_at < (now() AT TIME ZONE 'UTC') - interval '2 hours')"
        )
        return bool(ran), bool(history)
    except asyncpg.PostgresError:
        return False, False
    finally:
        await conn.close()


def measure(code: Path, warmup: int | None, wait_history: bool, limit: float) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="pt-demo-start-"))
    argv = [sys.executable, "-m", "pipectl", "demo", "--fresh", "--state-dir", str(state)]
    if warmup is not None:
        argv += ["--warmup", str(warmup)]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(code)}
    began = time.monotonic()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=code, start_new_session=True
    )
    os.close(slave)
    seen: dict[str, float] = {}
    screen = b""
    probed = 0.0
    wanted = {"console", "first data", "first refreshed step"}
    if wait_history:
        wanted.add("history loaded")
    try:
        while time.monotonic() - began < limit and not wanted <= set(seen):
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    screen = (screen + os.read(master, 65536))[-200_000:]
                except OSError:
                    break
                plain = ESCAPES.sub(b"", screen)
                for name, mark in MARKS.items():
                    if name not in seen and mark in plain:
                        seen[name] = time.monotonic() - began
            port_file = state / "postgres" / "port"
            if time.monotonic() - probed > 0.5 and port_file.exists():
                probed = time.monotonic()
                ran, history = asyncio.run(_probe(int(port_file.read_text())))
                if ran:
                    seen.setdefault("first refreshed step", probed - began)
                if history:
                    seen.setdefault("history loaded", probed - began)
        asked = time.monotonic()
        os.write(master, b"q")
        process.wait(120)
        seen["quit took"] = time.monotonic() - asked
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
        shutil.rmtree(state, ignore_errors=True)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, help="pass --warmup to the demo")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--no-history-wait", action="store_true")
    parser.add_argument("--limit", type=float, default=400.0, help="give up after (seconds)")
    args = parser.parse_args()
    seen = measure(args.code, args.warmup, not args.no_history_wait, args.limit)
    for name, value in sorted(seen.items(), key=lambda item: item[1]):
        print(f"{name:22} {value:6.1f}s")


if __name__ == "__main__":
    main()
