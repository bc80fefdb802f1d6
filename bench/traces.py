"""Traces and spans per window from an agent with the demo's schedules, the simulator writing:
the SDK's default sampler (parent-based, always on) against pipectl's NoHousekeeping.

    python -m bench.traces [--window 30] [--warmup 10]

Each sampler gets a fresh agent on the same database and simulator; spans go to an in-memory
exporter. A root SQL span is a trace of one statement outside any step, check or request
(heartbeats, request sweeps, pool resets): what NoHousekeeping drops.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter

from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.common import Database, Figure, Section, shared_servers
from pipectl import telemetry
from pipectl.agent.service import Agent
from pipectl.agent.tracing import instrument_sql
from pipectl.cli.demo import demo_config
from pipectl.simulator import ApesSimulator


async def spans_of(
    db: Database, sampler: sampling.Sampler | None, warmup: float, window: float
) -> list[ReadableSpan]:
    """The spans an agent ends in `window` seconds after `warmup` (None: NoHousekeeping)."""
    exporter = InMemorySpanExporter()
    built = telemetry.build("pipectl-agent", "bench", exporter=exporter)
    assert built is not None
    provider = built.provider
    if sampler is not None:
        provider.sampler = sampler  # read by the tracers made below
    instrument_sql(provider)
    agent = Agent(demo_config(db.dsn, db.redis_url), name="bench-traces", tracer_provider=provider)
    try:
        await agent.start()
        serving = asyncio.create_task(agent.serve())
        await asyncio.sleep(warmup)
        exporter.clear()
        await asyncio.sleep(window)
        spans = list(exporter.get_finished_spans())
        await agent.stop()
        await serving
    finally:
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        provider.shutdown()
    return spans


def _root_sql(span: ReadableSpan) -> bool:
    return span.parent is None and "db.system" in (span.attributes or {})


async def run(window: float = 30.0, warmup: float = 10.0) -> Section:
    async with Database.create() as db:
        simulator = ApesSimulator(db.dsn, db.redis_url, seed=1)
        await simulator.setup()
        await simulator.backfill(days=1)
        stop = asyncio.Event()
        writing = asyncio.create_task(simulator.run(stop))
        try:
            before = await spans_of(db, sampling.ParentBased(sampling.ALWAYS_ON), warmup, window)
            after = await spans_of(db, None, warmup, window)
        finally:
            stop.set()
            await writing
    rows = []
    for label, spans in (("default (ParentBased(AlwaysOn))", before), ("NoHousekeeping", after)):
        roots = Counter(
            "SQL" if _root_sql(s) else s.name.split()[0] for s in spans if s.parent is None
        )
        rows.append(
            [
                label,
                str(len({s.context.trace_id for s in spans})),
                str(len(spans)),
                str(roots.get("SQL", 0)),
                ", ".join(f"{k} {v}" for k, v in roots.most_common() if k != "SQL"),
            ]
        )
    return Section(
        f"Traces per {window:.0f} s (demo schedules, simulator writing)",
        [
            Figure(
                f"traces per {window:.0f} s",
                rows[1][1],
                target="no single-statement traces",
                baseline=rows[0][1],
            ),
            Figure("root SQL spans", rows[1][3], target="0", baseline=rows[0][3]),
        ],
        notes=["the baseline is the SDK's default sampler on the same database, just before"],
        tables=[("by sampler", ["sampler", "traces", "spans", "root SQL", "other roots"], rows)],
    )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before counting")
    args = parser.parse_args(argv)
    (await run(args.window, args.warmup)).print()


if __name__ == "__main__":
    with shared_servers():
        asyncio.run(main())
