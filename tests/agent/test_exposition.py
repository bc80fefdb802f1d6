"""/metrics served from stored bodies: fresh after every update, rendered once per change."""

from __future__ import annotations

import gzip
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipectl.agent.http import MetricsServer
from pipectl.agent.metrics import AgentMetrics
from pipectl.model import RunStatus
from pipectl.store import CheckExport, SharedState, StepExport
from tests.helpers import wait_for

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def served() -> Iterator[tuple[AgentMetrics, MetricsServer]]:
    metrics = AgentMetrics()
    metrics.declare({"rollup": 300.0}, {"feed_fresh": 60.0})
    server = MetricsServer("127.0.0.1:0")
    server.start(metrics)
    try:
        yield metrics, server
    finally:
        server.stop()


def get(server: MetricsServer, **headers: str) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(response.headers.items()), response.read()


def renders(server: MetricsServer) -> int:
    assert server.exposition is not None
    return server.exposition.renders


def test_a_scrape_right_after_an_update_sees_it(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    metrics, server = served
    _, body = get(server)
    assert b'pipectl_step_runs_total{status="succeeded",step="rollup"} 0.0' in body
    metrics.run_finished("rollup", RunStatus.SUCCEEDED, 1.5)
    _, body = get(server)  # no pause: the stored body is out of date, so it is rendered now
    assert b'pipectl_step_runs_total{status="succeeded",step="rollup"} 1.0' in body
    metrics.shared(shared_state(last_success=1_700_000_000.0))
    _, body = get(server)
    assert b'pipectl_step_last_success_timestamp_seconds{step="rollup"} 1.7e+09' in body


def test_an_update_that_changes_no_gauge_is_still_a_change(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    """A second identical run changes only a counter and the histogram: the body follows."""
    metrics, server = served
    for expected in (b"1.0", b"2.0"):
        metrics.run_finished("rollup", RunStatus.SUCCEEDED, 0.3)
        _, body = get(server)
        assert b'pipectl_step_run_duration_seconds_count{step="rollup"} ' + expected in body
        assert b'pipectl_step_runs_total{status="succeeded",step="rollup"} ' + expected in body


def test_unchanged_metrics_are_not_rendered_again(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    metrics, server = served
    first = get(server)[1]
    count = renders(server)
    metrics.shared(shared_state())
    metrics.database_reachable(True)
    generation = metrics.changes.generation
    metrics.shared(shared_state())  # the next heartbeat finds the same: no change
    metrics.database_reachable(True)
    assert metrics.changes.generation == generation
    second = stored_part(get(server)[1])
    assert second != stored_part(first) and b"pipectl_database_up 1.0" in second
    assert stored_part(get(server)[1]) == stored_part(get(server)[1]) == second
    assert renders(server) == count + 1


def stored_part(body: bytes) -> bytes:
    """The body without the process's own series, which are rendered at every scrape."""
    return b"".join(
        line
        for line in body.splitlines(keepends=True)
        if not re.match(rb"(# (HELP|TYPE) )?(process|python)_", line)
    )


def shared_state(last_success: float = 1_700_000_000.0) -> SharedState:
    return SharedState(
        steps=(StepExport("rollup", False, last_success, False),),
        checks=(CheckExport("feed_fresh", "freshness", "fail", False, last_success),),
        agents_alive=1,
        requests_pending=2,
        requests_oldest_age=30.0,
    )


def test_shared_state_is_exported_from_the_snapshot_and_removed_without_one(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    metrics, server = served
    _, body = get(server)  # never reached the database: nothing shared is known
    assert b"pipectl_agents_alive 0.0" in body and b"pipectl_database_up 0.0" in body
    assert not samples(body, b"pipectl_check_status", b"pipectl_requests_pending")
    metrics.shared(shared_state())
    _, body = get(server)
    for line in (
        b'pipectl_check_status{check="feed_fresh",kind="freshness"} 2.0',
        b'pipectl_check_silenced{check="feed_fresh"} 0.0',
        b'pipectl_check_last_run_timestamp_seconds{check="feed_fresh"} 1.7e+09',
        b'pipectl_step_failing{step="rollup"} 0.0',
        b'pipectl_step_paused{step="rollup"} 0.0',
        b"pipectl_agents_alive 1.0",
        b"pipectl_requests_pending 2.0",
        b"pipectl_requests_oldest_pending_age_seconds 30.0",
        b'pipectl_step_interval_seconds{step="rollup"} 300.0',
        b'pipectl_check_interval_seconds{check="feed_fresh"} 60.0',
    ):
        assert line in body, line
    metrics.shared(None)  # the database went away: removed, not left stale
    _, body = get(server)
    assert b"pipectl_agents_alive 0.0" in body
    assert not samples(
        body,
        b"pipectl_check_status",
        b"pipectl_check_last_run_timestamp_seconds",
        b"pipectl_step_failing",
        b"pipectl_step_last_success_timestamp_seconds",
        b"pipectl_requests_pending",
        b"pipectl_requests_oldest_pending_age_seconds",
    )


def samples(body: bytes, *names: bytes) -> list[bytes]:
    """The sample lines of these metric families."""
    return [
        line
        for line in body.splitlines()
        if any(re.match(re.escape(name) + rb"[{ ]", line) for name in names)
    ]


def test_process_metrics_are_fresh_at_every_scrape(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    _, server = served
    get(server)
    count = renders(server)
    for _ in range(3):
        _, body = get(server, Accept="application/openmetrics-text; version=1.0.0")
        assert body.count(b"# EOF\n") == 1 and body.endswith(b"# EOF\n")
        assert b"process_cpu_seconds_total " in body and b"python_info{" in body
        assert b"pipectl_build_info{" in body
    assert renders(server) == count + 1  # one render of the stored part, for the new variant


async def test_changes_are_rendered_before_the_next_scrape(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    metrics, server = served
    get(server)  # the scrape makes its variant known to the pre-rendering thread
    count = renders(server)
    metrics.runs_in_progress(1)

    async def rendered() -> bool:
        return renders(server) > count

    await wait_for(rendered, timeout=5)
    count = renders(server)
    _, body = get(server)
    assert b"pipectl_step_runs_in_progress 1.0" in body
    assert renders(server) == count  # answered from the body rendered after the change


def test_openmetrics_and_gzip_variants(served: tuple[AgentMetrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.request_finished("rerun", "succeeded")
    headers, plain = get(server)
    assert headers["Content-Type"].startswith("text/plain")
    headers, zipped = get(server, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert stored_part(gzip.decompress(zipped)) == stored_part(plain)
    assert b"process_cpu_seconds_total " in gzip.decompress(zipped)  # a second gzip member
    headers, body = get(server, Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith(OPENMETRICS)
    assert body.endswith(b"# EOF\n")
    assert b'pipectl_requests_total{kind="rerun",status="succeeded"} 1.0' in body
    assert int(headers["Content-Length"]) == len(body)


def test_name_filters_and_other_methods_as_prometheus_client_answers(
    served: tuple[AgentMetrics, MetricsServer],
) -> None:
    _, server = served
    _, body = get_path(server, "/metrics?name[]=pipectl_build_info")
    assert body.startswith(b"# HELP pipectl_build_info")
    assert b"pipectl_step_runs_total" not in body
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", method="OPTIONS")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Allow"] == "OPTIONS,GET"


def get_path(server: MetricsServer, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as response:
        return response.status, response.read()


def test_stopping_ends_the_rendering_thread(served: tuple[AgentMetrics, MetricsServer]) -> None:
    _, server = served
    assert server.exposition is not None
    thread = server.exposition._thread
    assert thread is not None and thread.is_alive()
    started = time.monotonic()
    server.stop()
    assert not thread.is_alive() and time.monotonic() - started < 5


# Every update must go through AgentMetrics, or the stored body would miss it.
_DIRECT_UPDATE = re.compile(r"\bmetrics\.[a-z_]+\.(?:labels\(|set\(|inc\(|dec\(|observe\()")


def test_only_agent_metrics_updates_metric_objects(repo_root: Path) -> None:
    offenders = [
        f"{path.relative_to(repo_root)}:{number}: {line.strip()}"
        for folder in ("agent", "checks", "pipectl", "console", "bench")
        for path in sorted((repo_root / folder).rglob("*.py"))
        if path.name != "metrics.py" or path.parent.name != "agent"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _DIRECT_UPDATE.search(line)
    ]
    assert not offenders, "update metrics through AgentMetrics methods:\n" + "\n".join(offenders)
