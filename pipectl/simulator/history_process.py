"""The backfill in a child process, so live traffic, the agent and the console start at once.

Building 30 days of rows is Python work (about 5,000 rows a second): in the process that also
runs the console and the agent it would hold their event loop for a second at a time. The
child runs `ApesSimulator.backfill` (one transaction: all of the history or none of it) and
reports on stdout, one JSON object a line: `{"done": N, "total": M}` per chunk, then
`{"report": {...}}`. Stopping it (`HistoryLoad.stop`, or the parent's end) rolls the
transaction back; the next start backfills again.

    PIPECTL_HISTORY_DSN=... python -m pipectl.simulator.history_process DAYS [--seed N] [--rate X]

The DSN goes through the environment, never the command line (which `ps` shows to anyone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import datetime

from pipectl.simulator.backfill import BackfillReport

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
STOP_GRACE_S = 5.0
DSN_ENV = "PIPECTL_HISTORY_DSN"


class HistoryLoadError(RuntimeError):
    """The child process failed; the message ends with what it wrote on stderr."""


def _report_json(report: BackfillReport) -> dict[str, object]:
    return {
        "rows": report.rows,
        "seconds": report.seconds,
        "skipped": report.skipped,
        "start": report.start.isoformat() if report.start else None,
        "end": report.end.isoformat() if report.end else None,
        "reason": report.reason,
    }


def _report_from(data: dict[str, object]) -> BackfillReport:
    def moment(value: object) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    rows = data.get("rows")
    seconds = data.get("seconds")
    return BackfillReport(
        rows={str(k): int(v) for k, v in rows.items()} if isinstance(rows, dict) else {},
        seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
        skipped=bool(data.get("skipped")),
        start=moment(data.get("start")),
        end=moment(data.get("end")),
        reason=str(data.get("reason") or ""),
    )


class HistoryLoad:
    """One backfill running in a child process; `progress(done, total)` is called in the
    parent's event loop as chunks are written."""

    def __init__(
        self,
        dsn: str,
        days: int,
        *,
        seed: int | None = None,
        rate: float = 1.0,
        progress: Progress | None = None,
    ) -> None:
        self.dsn = dsn
        self.days = days
        self.seed = seed
        self.rate = rate
        self.progress = progress
        self.done = 0
        self.total: int | None = None
        self._process: asyncio.subprocess.Process | None = None

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", __name__, str(self.days), "--rate"]
        command.append(repr(self.rate))
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        return command

    async def run(self) -> BackfillReport:
        """Start the child and follow it to its report. Cancelled, it stops the child."""
        self._process = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, DSN_ENV: self.dsn},
        )
        process = self._process
        assert process.stdout is not None
        assert process.stderr is not None
        errors = asyncio.create_task(process.stderr.read())
        report: BackfillReport | None = None
        try:
            async for line in process.stdout:
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if not isinstance(message, dict):
                        continue
                    if "report" in message and isinstance(message["report"], dict):
                        report = _report_from(message["report"])
                    elif isinstance(message.get("done"), int):
                        self.done, self.total = message["done"], message.get("total")
                        if self.progress is not None and isinstance(self.total, int):
                            self.progress(self.done, self.total)
            code = await process.wait()
        except BaseException:
            errors.cancel()
            await self.stop()
            raise
        stderr = (await errors).decode("utf-8", "replace").strip()
        if code != 0 or report is None:
            tail = "\n".join(stderr.splitlines()[-5:])
            raise HistoryLoadError(f"the history load exited with code {code}: {tail}")
        return report

    async def stop(self) -> None:
        """End the child (its transaction rolls back), SIGTERM first, then SIGKILL."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _child(dsn: str, days: int, seed: int | None, rate: float) -> None:
    from pipectl.simulator.engine import ApesSimulator

    simulator = ApesSimulator(dsn, None, seed=seed, rate=rate)
    report = await simulator.backfill(
        days, progress=lambda done, total: _emit({"done": done, "total": total})
    )
    _emit({"report": _report_json(report)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipectl.simulator.history_process")
    parser.add_argument("days", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--rate", type=float, default=1.0)
    args = parser.parse_args(argv)
    # SIGTERM from the parent: exit at once; the server rolls the transaction back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl+C at the terminal reaches the whole process group: the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        parser.error(f"{DSN_ENV} is not set")
    asyncio.run(_child(dsn, args.days, args.seed, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
