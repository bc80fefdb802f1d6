"""Scrape latency of the agent's /metrics with 50 steps and 200 checks.

    python -m bench.scrape [--scrapes 500]

A child process plays the agent's metrics side: agent.metrics.AgentMetrics with 50 steps (each
with runs of every outcome and a duration histogram) and 200 checks of every kind (cache checks
with per-level counters), served by agent.http.MetricsServer as in the agent (the body stored
and rendered again after changes: agent/exposition.py). The benchmark process scrapes it like
Prometheus (a new TCP connection per scrape, whole body read), interleaved with scrapes of an
empty registry served the same way (the floor of the HTTP stack). Three modes: the child's
main thread idle (the agent's event loop is idle nearly all the time); spinning in pure Python
(the metrics thread competes for the GIL); and updating a metric every 2 ms, so that nearly
every scrape finds the stored body out of date and renders it (what every scrape cost before
the body was stored). Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import Figure, Section, load_average, ms, percentile

STEPS = 50
CHECKS = 200
KINDS = ("freshness", "volume", "metric", "quality", "cache")


def populated(steps: int = STEPS, checks: int = CHECKS) -> object:
    """An AgentMetrics as after a day of work: every step and check has reported."""
    from pipectl.agent.metrics import AgentMetrics
    from pipectl.model import CheckResult, CheckStatus, RunStatus
    from pipectl.store import CheckExport, SharedState, StepExport

    rng = random.Random(1)
    metrics = AgentMetrics()
    step_names = {f"step_{i:02d}": 300.0 for i in range(steps)}
    check_kinds = [(f"check_{i:03d}", KINDS[i % len(KINDS)]) for i in range(checks)]
    metrics.declare(step_names, {name: 60.0 for name, _ in check_kinds})
    now = time.time()
    for step in step_names:
        for _ in range(20):
            status = rng.choice([RunStatus.SUCCEEDED] * 8 + [RunStatus.FAILED, RunStatus.CANCELLED])
            metrics.run_finished(step, status, rng.lognormvariate(0, 1.5))
    statuses = list(CheckStatus)
    for name, kind in check_kinds:
        baseline: dict[str, object] = {}
        if kind == "cache":
            baseline = {
                "source": "app",
                "deltas": True,
                "levels": {
                    level: {"hits": rng.randint(50, 900), "lookups": 1000}
                    for level in ("L1", "L2", "L3", "all")
                },
            }
        result = CheckResult(
            check=name,
            status=rng.choice(statuses),
            value=rng.random() * 100,
            message="",
            observed_at=datetime.now(UTC),
            baseline=baseline,
            anomaly_score=rng.gauss(0, 2) if kind in ("volume", "metric") else None,
        )
        metrics.check_finished(kind, result)
    for table in ("public.rule_performance", "public.user_feedback"):
        for dimension in ("completeness", "accuracy", "consistency", "timeliness"):
            metrics.quality(table, dimension, rng.random())
    metrics.shared(  # the shared state as the heartbeat reads it from the database
        SharedState(
            steps=tuple(
                StepExport(step, rng.random() < 0.1, now - 300, rng.random() < 0.05)
                for step in step_names
            ),
            checks=tuple(
                CheckExport(name, kind, str(rng.choice(statuses)), rng.random() < 0.05, now)
                for name, kind in check_kinds
            ),
            agents_alive=1,
            requests_pending=2,
            requests_oldest_age=0.0,
        )
    )
    metrics.database_reachable(True)
    return metrics


def _serve(
    pipe: multiprocessing.connection.Connection,
    busy: multiprocessing.synchronize.Event,
    changing: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Child: the populated registry and an empty one, each on MetricsServer."""
    from prometheus_client import CollectorRegistry

    from pipectl.agent.http import MetricsServer

    metrics: Any = populated()
    full = MetricsServer("127.0.0.1:0")
    full.start(metrics)
    empty = MetricsServer("127.0.0.1:0")
    empty.start(CollectorRegistry())
    pipe.send((full.port, empty.port))
    updates = 0
    while not stop.is_set():
        if busy.is_set():
            spin = 0
            for i in range(200_000):  # pure Python: holds the GIL between switch intervals
                spin += i * i
        elif changing.is_set():
            updates += 1
            metrics.runs_in_progress(updates % 3)
            time.sleep(0.002)
        else:
            stop.wait(0.05)
    full.stop()
    empty.stop()


def scrape(port: int) -> tuple[float, int]:
    """(milliseconds, body bytes) of one scrape over a new connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read()
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000, len(body)


def render_ms(repeats: int = 20) -> float:
    """Median time to render the exposition in-process (generate_latest), no HTTP."""
    from prometheus_client import generate_latest

    registry = populated().registry  # type: ignore[attr-defined]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(scrapes: int) -> Section:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    busy, changing, stop = context.Event(), context.Event(), context.Event()
    process = context.Process(target=_serve, args=(child, busy, changing, stop), daemon=True)
    process.start()
    try:
        full_port, empty_port = parent.recv()
        for _ in range(20):  # warm-up
            scrape(full_port)
            scrape(empty_port)
        results: dict[str, tuple[list[float], list[float]]] = {}
        size = 0
        lines = 0
        for mode in ("idle", "busy", "changing"):
            busy.clear()
            if mode == "busy":
                busy.set()
            elif mode == "changing":
                changing.set()
            time.sleep(0.2)
            ours: list[float] = []
            floor: list[float] = []
            for _ in range(scrapes):
                took, size = scrape(full_port)
                ours.append(took)
                floor.append(scrape(empty_port)[0])
            results[mode] = (ours, floor)
        busy.clear()
        changing.clear()
        conn = http.client.HTTPConnection("127.0.0.1", full_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        lines = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    finally:
        stop.set()
        process.join(10)
    idle, idle_floor = results["idle"]
    hot, hot_floor = results["busy"]
    moving, moving_floor = results["changing"]
    return Section(
        f"/metrics scrape latency, {STEPS} steps and {CHECKS} checks",
        [
            Figure(
                "scrape p95, agent idle",
                ms(percentile(idle, 95)),
                "<= 5 ms",
                f"{ms(percentile(idle_floor, 95))} (empty registry)",
                f"p50 {ms(statistics.median(idle))}, p99 {ms(percentile(idle, 99))}",
            ),
            Figure(
                "scrape p95, agent's main thread busy",
                ms(percentile(hot, 95)),
                "",
                f"{ms(percentile(hot_floor, 95))} (empty registry)",
                f"p50 {ms(statistics.median(hot))}, p99 {ms(percentile(hot, 99))}",
            ),
            Figure(
                "scrape p95, metrics updated every 2 ms",
                ms(percentile(moving, 95)),
                "",
                f"{ms(percentile(moving_floor, 95))} (empty registry)",
                f"p50 {ms(statistics.median(moving))}, p99 {ms(percentile(moving, 99))};"
                " nearly every scrape renders",
            ),
            Figure("exposition size", f"{size / 1024:.0f} KiB, {lines:,} samples", "", "", ""),
            Figure(
                "reference: rendering alone (generate_latest, in-process)",
                ms(render_ms()),
                "",
                "",
                "the share of a scrape that is prometheus-client's text rendering",
            ),
        ],
        [
            f"{scrapes} scrapes per mode, each interleaved with one of the empty registry;"
            f" load average at the end: {load_average()}.",
            "busy = the child's main thread spinning in pure Python, so the metrics thread"
            " gets the GIL only at the interpreter's switch interval (5 ms): the worst case,"
            " not the agent's normal state.",
            "idle and busy scrapes are answered from the body rendered after the last change;"
            " an agent's metrics change when a run, check or request finishes, seconds to"
            " minutes apart, against a scrape every 15 s or so.",
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args(argv)
    run(args.scrapes).print()


if __name__ == "__main__":
    main()
