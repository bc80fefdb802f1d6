"""Operator verbs: status, history, rerun, publish, pause, resume, silence, unsilence.

The same store functions the console uses; rich tables for people, stable JSON for scripts.
Write verbs file a request row (PostgreSQL records who asked) and, with --wait, follow it to
its outcome via LISTEN/NOTIFY.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from pipectl import store
from pipectl.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_UNKNOWN,
    NAME_ARGUMENT,
    REASON_ARGUMENT,
    CliError,
    cell_limit,
    connect_config,
    connection_lost,
    console,
    duration_argument,
    float_argument,
    int_argument,
    load,
    print_json,
    request_telemetry,
    tracing_requested,
)
from pipectl.dag import CycleError
from pipectl.db import ConnectConfig, connection, describe_connection, resolve
from pipectl.format import STATUS_STYLE, age, band, due, number, seconds, status_text
from pipectl.incidents import Incident, assess, healthy_text, incident_json
from pipectl.migrate import ensure_current
from pipectl.model import Event, Outcome, Request, RequestKind, Run, RunStatus
from pipectl.request_args import (
    MAX_SILENCE,
    ArgsError,
    PublishArgs,
    RequestArgs,
    RerunArgs,
    SilenceArgs,
    describe_args,
    parse_args,
)
from pipectl.resilience import describe
from pipectl.safetext import CELL, literal, visible
from pipectl.store.base import Conn
from pipectl.store.console import RerunPlan, rerun_plan
from pipectl.store.lineage import published_lineage


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status",
        help="pipeline health; exit 0 ok, 1 warnings, 2 failures",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=show_status)

    history = subparsers.add_parser(
        "history", help="recent runs (or requests, or events), newest first"
    )
    history.add_argument(
        "step", nargs="?", type=NAME_ARGUMENT, help="only this step (with --events: subject)"
    )
    shown = history.add_mutually_exclusive_group()
    shown.add_argument("--requests", action="store_true", help="operator requests instead of runs")
    shown.add_argument(
        "--events",
        action="store_true",
        help="the event trail instead of runs: status changes, actions, deploys (a deploy "
        "shows each check's status just before it next to its status now)",
    )
    history.add_argument(
        "--limit", type=HISTORY_LIMIT, default=20, metavar="N", help="rows to show (1-10000)"
    )
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=show_history)

    rerun = subparsers.add_parser("rerun", help="ask the agent to run a step now")
    rerun.add_argument("step", type=NAME_ARGUMENT)
    rerun.add_argument(
        "--downstream", action="store_true", help="and every step that depends on it, in order"
    )
    rerun.add_argument(
        "--dry-run",
        action="store_true",
        help="print the steps it would run, in order, with expected durations; file nothing",
    )
    _request_options(rerun)
    rerun.set_defaults(handler=request_rerun)

    publish = subparsers.add_parser(
        "publish",
        help="publish a held step anyway: refresh it once more without enforcing its gates",
    )
    publish.add_argument("step", type=NAME_ARGUMENT)
    publish.add_argument(
        "--run",
        type=RUN_ID,
        metavar="ID",
        help="the held run to publish (default: the step's latest run, if it is held); the"
        " agent refuses when it is no longer the step's latest",
    )
    _request_options(publish)
    publish.set_defaults(handler=request_publish)

    for verb, text in (("pause", "stop a step's scheduled runs"), ("resume", "undo pause")):
        parser = subparsers.add_parser(verb, help=text)
        parser.add_argument("step", type=NAME_ARGUMENT)
        # As in the console's pause dialog: a paused step stays paused until someone
        # resumes it, so whoever finds it paused must be able to read why.
        _request_options(parser, reason_required=verb == "pause")
        parser.set_defaults(handler=request_pause, kind=verb)

    silence = subparsers.add_parser(
        "silence", help="keep a check recording but raising no alert, for a while"
    )
    silence.add_argument("check", type=NAME_ARGUMENT)
    silence.add_argument(
        "--for",
        dest="span",
        required=True,
        type=SILENCE_SPAN,
        metavar="DURATION",
        help="how long, e.g. 30m, 2h, 1d (at most 30d)",
    )
    _request_options(silence)
    silence.set_defaults(handler=request_silence)

    unsilence = subparsers.add_parser("unsilence", help="end a silence now")
    unsilence.add_argument("check", type=NAME_ARGUMENT)
    _request_options(unsilence)
    unsilence.set_defaults(handler=request_unsilence)


def _request_options(parser: argparse.ArgumentParser, *, reason_required: bool = False) -> None:
    if reason_required:
        parser.add_argument(
            "--reason",
            required=True,
            type=REQUIRED_REASON,
            help="why (required; kept in the audit trail and shown with the pause)",
        )
    else:
        parser.add_argument(
            "--reason", default="", type=REASON_ARGUMENT, help="why (kept in the audit trail)"
        )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the outcome; exit code follows it"
    )
    parser.add_argument(
        "--timeout",
        type=WAIT_TIMEOUT,
        default=600.0,
        metavar="SECONDS",
        help="with --wait: give up after this long (default 600, at most 86400)",
    )
    parser.add_argument("--json", action="store_true")


def _required_reason(text: str) -> str:
    reason = REASON_ARGUMENT(text)
    if not reason.strip():
        raise argparse.ArgumentTypeError("say why: an empty reason tells the next operator nothing")
    return reason


REQUIRED_REASON = _required_reason
HISTORY_LIMIT = int_argument(1, 10_000)
RUN_ID = int_argument(1, 2**63 - 1)
WAIT_TIMEOUT = float_argument(above=0, at_most=86_400, unit="seconds")
SILENCE_SPAN = duration_argument(maximum=MAX_SILENCE)


# ------------------------------------------------------------------------------- status


async def show_status(args: argparse.Namespace) -> int:
    config = connect_config(args)
    async with connection(config, "pipectl status") as conn:
        target = resolve(config.database.dsn)
        if target.from_environment:  # no database named: say which one this is, and why
            where = await describe_connection(conn, target)
            print(f"pipectl: connected to {where}", file=sys.stderr)
        await ensure_current(conn)
        snapshot = await store.status_snapshot(conn)
        lineage = await published_lineage(conn)
    incidents = assess(lineage, snapshot.steps, snapshot.checks, snapshot.taken_at).incidents()
    code = snapshot.worst.exit_code
    if args.json:
        print_json(status_json(snapshot, incidents))
    else:
        render_status(snapshot, incidents)
    return code


def render_status(
    snapshot: store.StatusSnapshot, incidents: Sequence[Incident] | None = None
) -> None:
    """The human form of `pipectl status` (also printed at the end of a headless demo):
    incidents first (when given), then steps and checks."""
    out = console()
    cells = cell_limit()
    now = snapshot.taken_at
    if incidents is not None:
        render_incidents(snapshot, incidents)
    steps = Table(title="Steps", title_justify="left", header_style="bold", box=None)
    for column in ("step", "state", "last run", "took", "rows", "next run", "note"):
        steps.add_column(column)
    for step in snapshot.steps:
        last = step.last_run
        note = ""
        if step.paused:
            note = f"paused by {step.paused_by}" + (
                f": {step.paused_reason}" if step.paused_reason else ""
            )
        elif step.state == "held" and step.state_run is not None:
            held = step.state_run
            note = f"{held.error} (run {held.id}: pipectl publish or rerun {step.name})"
        elif step.state == "failing" and step.state_run and step.last_decisive:
            attempt, failed = step.state_run, step.last_decisive
            note = f"attempt {attempt.attempt} {attempt.status}; last attempt failed"
            note += f": {failed.error}" if failed.error else ""
        elif last and last.error:
            note = last.error
        steps.add_row(
            visible(step.name, limit=cells),
            Text(status_text(step.state), style=STATUS_STYLE.get(step.state, "")),
            age(last.finished_at or last.started_at or last.queued_at, now) if last else "-",
            seconds(last.duration_seconds) if last else "-",
            number(last.rows) if last and last.rows is not None else "-",
            due(step.next_run_at, now),
            literal(note, "dim", limit=cells),
        )
    out.print(steps if snapshot.steps else "No steps published yet (is an agent configured?)")
    checks = Table(title="Checks", title_justify="left", header_style="bold", box=None)
    for column in ("check", "status", "value", "expected", "since", "message"):
        checks.add_column(column)
    for check in snapshot.checks:
        state = status_text(str(check.status))
        if check.silenced(now):
            state += " (silenced)"
        checks.add_row(
            visible(check.name, limit=cells),
            Text(state, style=STATUS_STYLE.get(str(check.status), "")),
            number(check.value),
            band(check.expected_low, check.expected_high),
            age(check.status_since, now),
            literal(check.message, "dim", limit=cells),
        )
    if snapshot.checks:
        out.print(checks)
    alive = [f"{visible(a.name, limit=cells)} ({age(a.last_seen, now)})" for a in snapshot.agents]
    agents = ", ".join(alive) or "none"
    out.print(
        f"agents alive: {agents}    pending requests: {snapshot.pending_requests}    "
        f"overall: {status_text(str(snapshot.worst))}"
    )


def render_incidents(snapshot: store.StatusSnapshot, incidents: Sequence[Incident]) -> None:
    """Each incident: its root cause with times, the items it groups, what it impacts and
    what to do; or one line saying all is well."""
    out = console()
    if not incidents:
        text = healthy_text(snapshot.steps, snapshot.checks, snapshot.taken_at)
        out.print(Text(text, style="green"))
        out.print()
        return
    out.print(Text(f"Incidents ({len(incidents)})", style="bold"))
    for incident in incidents:
        severity = str(incident.severity)
        out.print(
            Text.assemble(
                (status_text(severity), STATUS_STYLE.get(severity, "")),
                " ",
                (visible(f"{incident.root} ({incident.root_kind})"), "bold"),
                f"  since {age(incident.since, snapshot.taken_at)}",
            )
        )
        member_names = {(m.type, m.name) for m in incident.members}
        items = ", ".join(f"{m.short} {m.status}" for m in incident.members)
        still_ok = [i for i in incident.impacts if (i.type, i.name) not in member_names]
        acts = [f"pipectl why {incident.root}"]
        if incident.rerun:
            acts.append(f"pipectl rerun {incident.rerun} --downstream")
        if incident.checks:
            acts.append(f"pipectl silence {incident.checks[0]} --for 1h")
        lines = [Text(visible(incident.cause_text))]
        lines.append(Text("not ok: ", style="dim") + Text(visible(items)))
        if still_ok:
            downstream = ", ".join(f"{i.short} ({i.kind})" for i in still_ok)
            lines.append(Text("downstream, ok so far: ", style="dim") + Text(visible(downstream)))
        lines.append(Text("act: ", style="dim") + Text(visible("  |  ".join(acts))))
        for line in lines:
            out.print(Padding(line, (0, 0, 0, 2), expand=False))
    out.print()


def status_json(
    snapshot: store.StatusSnapshot, incidents: Sequence[Incident] = ()
) -> dict[str, Any]:
    now = snapshot.taken_at
    return {
        "taken_at": now,
        "status": str(snapshot.worst),
        "steps": [
            {
                "name": s.name,
                "status": s.state,
                "kind": s.kind,
                "relation": s.relation,
                "schedule": s.schedule,
                "depends_on": list(s.depends_on),
                "paused": s.paused,
                "paused_by": s.paused_by,
                "paused_reason": s.paused_reason,
                "next_run_at": s.next_run_at,
                "last_success_at": s.last_success_at,
                "last_run": run_json(s.last_run) if s.last_run else None,
                "state_run_id": s.state_run.id if s.state_run else None,
                "gates": s.state_run.detail.get("gates", []) if s.state_run else [],
            }
            for s in snapshot.steps
        ],
        "checks": [
            {
                "name": c.name,
                "kind": c.kind,
                "status": str(c.status),
                "value": c.value,
                "expected_low": c.expected_low,
                "expected_high": c.expected_high,
                "message": c.message,
                "status_since": c.status_since,
                "last_result_at": c.last_result_at,
                "silenced": c.silenced(now),
                "silenced_until": c.silenced_until,
            }
            for c in snapshot.checks
        ],
        "agents": [
            {
                "name": a.name,
                "host": a.host,
                "pid": a.pid,
                "version": a.version,
                "started_at": a.started_at,
                "last_seen": a.last_seen,
            }
            for a in snapshot.agents
        ],
        "pending_requests": snapshot.pending_requests,
        "incidents": [incident_json(i) for i in incidents],
    }


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "step": run.step,
        "status": str(run.status),
        "trigger": str(run.trigger),
        "attempt": run.attempt,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_s": run.duration_seconds,
        "rows": run.rows,
        "agent": run.agent_name,
        "requested_by": run.requested_by,
        "request_id": run.request_id,
        "scheduled_for": run.scheduled_for,
        "error": run.error,
        "trace_id": run.trace_id,
        "gates": run.detail.get("gates", []),
        "gates_overridden": run.detail.get("gates_overridden"),
    }


# ------------------------------------------------------------------------------- history


async def show_history(args: argparse.Namespace) -> int:
    if args.requests:
        return await show_request_history(args)
    if args.events:
        return await show_event_history(args)
    config = connect_config(args)
    async with connection(config, "pipectl history") as conn:
        await ensure_current(conn)
        if args.step and not await store.step_states(conn, [args.step]):
            raise CliError(await _unknown_step(conn, args.step))
        runs = await store.recent_runs(conn, [args.step] if args.step else None, args.limit)
        reasons = await store.request_reasons(conn, [r.request_id for r in runs if r.request_id])
    if args.json:
        print_json([run_json(r) | {"reason": reasons.get(r.request_id or 0)} for r in runs])
        return EXIT_OK
    now = datetime.now(UTC)
    cells = cell_limit()
    table = Table(header_style="bold", box=None)
    columns = ("run", "step", "status", "trigger", "by", "reason", "started", "took", "rows")
    for column in (*columns, "agent", "error"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            str(run.id),
            visible(run.step, limit=cells),
            Text(status_text(str(run.status)), style=STATUS_STYLE.get(str(run.status), "")),
            str(run.trigger) + (f" #{run.attempt}" if run.attempt > 1 else ""),
            visible(run.requested_by or "-", limit=cells),
            literal(reasons.get(run.request_id, "") if run.request_id else "", limit=cells),
            age(run.started_at, now),
            seconds(run.duration_seconds),
            number(run.rows) if run.rows is not None else "-",
            visible(run.agent_name or "-", limit=cells),
            literal(run.error or "", "dim", limit=cells),
        )
    console().print(table if runs else "no runs yet")
    return EXIT_OK


async def show_request_history(args: argparse.Namespace) -> int:
    """Recent requests, whatever their rows hold: arguments that do not fit their kind (the
    agent rejects those) are described as such, never trusted."""
    if args.step:
        raise CliError("--requests lists requests for every target; leave out the step")
    config = connect_config(args)
    async with connection(config, "pipectl history") as conn:
        await ensure_current(conn)
        requests = await store.list_requests(conn, args.limit)
    if args.json:
        print_json([request_json(r) for r in requests])
        return EXIT_OK
    now = datetime.now(UTC)
    cells = cell_limit()
    table = Table(header_style="bold", box=None)
    for column in ("request", "kind", "target", "state", "by", "filed", "reason", "outcome"):
        table.add_column(column)
    for request in requests:
        state = request.state
        kind = f"{request.kind} {describe_args(request.kind, request.args)}".rstrip()
        table.add_row(
            str(request.id),
            literal(kind, limit=cells),
            literal(request.target, limit=cells),
            Text(status_text(state), style=STATUS_STYLE.get(state, "")),
            literal(request.requested_by, limit=cells),
            age(request.created_at, now),
            literal(request.reason, "italic", limit=cells),
            literal(request.detail or "", "dim", limit=cells),
        )
    console().print(table if requests else "no requests yet")
    return EXIT_OK


async def show_event_history(args: argparse.Namespace) -> int:
    """Recent events; a deploy also lists the checks whose status differs from before it."""
    config = connect_config(args)
    async with connection(config, "pipectl history") as conn:
        await ensure_current(conn)
        events = await store.recent_events(conn, subject=args.step, limit=args.limit)
        now_status = {c.name: str(c.status) for c in await store.check_states(conn)}
    if args.json:
        print_json([event_json(e) for e in events])
        return EXIT_OK
    now = datetime.now(UTC)
    out = console()
    cells = cell_limit()
    table = Table(header_style="bold", box=None)
    for column in ("event", "at", "kind", "subject", "by", "message"):
        table.add_column(column)
    for event in events:
        table.add_row(
            str(event.id),
            age(event.at, now),
            visible(event.kind, limit=cells),
            visible(event.subject, limit=cells),
            visible(event.actor, limit=cells),
            literal(event.message, limit=max(200, cells)),
        )
    out.print(table if events else "no events yet")
    for event in events:
        if event.kind == "deploy":
            out.print(deploy_comparison(event, now_status))
    return EXIT_OK


def deploy_comparison(event: Event, now_status: dict[str, str]) -> Table | Text:
    """Each check's status just before a deploy next to its status now."""
    before = event.detail.get("checks_before")
    if not isinstance(before, dict) or not before:
        return Text(f"deploy {event.id}: no check statuses recorded before it", style="dim")
    table = Table(
        title=f"deploy {event.id}: checks before it and now", header_style="bold", box=None
    )
    for column in ("check", "before", "now"):
        table.add_column(column)
    for name, was in sorted(before.items()):
        then = str(was.get("status", "?")) if isinstance(was, dict) else "?"
        current = now_status.get(name, "-")
        table.add_row(
            visible(name, limit=CELL),
            # `then` is read back from the event's stored detail: text others wrote.
            literal(status_text(then), STATUS_STYLE.get(then, ""), limit=CELL),
            literal(status_text(current), STATUS_STYLE.get(current, ""), limit=CELL)
            if current == then
            else literal(status_text(current) + " (changed)", "bold", limit=CELL),
        )
    return table


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "kind": event.kind,
        "subject": event.subject,
        "actor": event.actor,
        "message": event.message,
        "detail": event.detail,
    }


async def _unknown_step(conn: Conn, step: str) -> str:
    steps = await store.step_states(conn)
    known = [visible(s.name, limit=CELL) for s in steps if s.retired_at is None]
    listing = ", ".join(known) if known else "none published yet (start an agent)"
    return f"unknown step {step!r}; steps: {listing}"


async def _unknown_check(conn: Conn, check: str) -> str:
    checks = await store.check_states(conn)
    known = [visible(c.name, limit=CELL) for c in checks if c.retired_at is None]
    listing = ", ".join(known) if known else "none published yet (start an agent)"
    return f"unknown check {check!r}; checks: {listing}"


# ------------------------------------------------------------------------------- requests


async def request_rerun(args: argparse.Namespace) -> int:
    if args.dry_run:
        return await show_rerun_plan(args)
    return await _file_request(
        args, RequestKind.RERUN, args.step, RerunArgs(downstream=bool(args.downstream))
    )


async def request_publish(args: argparse.Namespace) -> int:
    """Names the exact held run (the latest, unless --run says which) and why: a reason is
    required, it is what the audit trail keeps of the override."""
    if not args.reason.strip():
        raise CliError("publish needs --reason: publishing past a gate is audited")
    run_id = args.run
    if run_id is None:
        config = connect_config(args)
        async with connection(config, "pipectl publish") as conn:
            await ensure_current(conn)
            latest = (await store.latest_outcomes(conn, [args.step])).get(args.step)
        if latest is None or latest.status != RunStatus.HELD:
            now = f"its latest run {latest.id} {latest.status}" if latest else "it has no run"
            raise CliError(f"{args.step} is not held ({now}): nothing to publish")
        run_id = latest.id
        if not args.json:
            console().print(f"publishing held run {run_id} of {args.step}: {latest.error or ''}")
    return await _file_request(args, RequestKind.PUBLISH, args.step, PublishArgs(run=run_id))


async def request_pause(args: argparse.Namespace) -> int:
    kind = RequestKind.PAUSE if args.kind == "pause" else RequestKind.RESUME
    return await _file_request(args, kind, args.step, None)


async def request_silence(args: argparse.Namespace) -> int:
    try:
        silence = SilenceArgs.parse({"seconds": args.span.total_seconds()})
    except ArgsError as exc:
        raise CliError(str(exc)) from None
    return await _file_request(args, RequestKind.SILENCE, args.check, silence)


async def request_unsilence(args: argparse.Namespace) -> int:
    return await _file_request(args, RequestKind.UNSILENCE, args.check, None)


async def _file_request(
    args: argparse.Namespace, kind: RequestKind, target: str, extra: RequestArgs | None
) -> int:
    if not tracing_requested():  # nothing would be exported: no span, no SDK loaded
        return await _file(args, connect_config(args), kind, target, extra, None)
    config = load(args).config
    # Spans go to stderr with OTEL_TRACES_EXPORTER=console: stdout may be --json.
    tracing = request_telemetry(config, "pipectl", console=sys.stderr)
    if tracing is None:
        return await _file(args, config, kind, target, extra, None)
    from pipectl.telemetry import filing_span

    try:
        with filing_span(tracing, str(kind), target) as (span, traceparent):
            code = await _file(args, config, kind, target, extra, traceparent)
            span.set_attribute("pipectl.exit_code", code)
            return code
    finally:
        tracing.shutdown()


async def _file(
    args: argparse.Namespace,
    config: ConnectConfig,
    kind: RequestKind,
    target: str,
    extra: RequestArgs | None,
    traceparent: str | None,
) -> int:
    async with connection(config, f"pipectl {kind}") as conn:
        await ensure_current(conn)
        # A retired definition (no live agent publishes it) is unknown to every agent.
        if kind in (RequestKind.RERUN, RequestKind.PUBLISH, RequestKind.PAUSE, RequestKind.RESUME):
            if not [s for s in await store.step_states(conn, [target]) if s.retired_at is None]:
                raise CliError(await _unknown_step(conn, target))
        elif not [c for c in await store.check_states(conn, [target]) if c.retired_at is None]:
            raise CliError(await _unknown_check(conn, target))
        try:
            request = await store.create_request(
                conn, kind, target, args.reason, extra, traceparent=traceparent
            )
        except asyncpg.InsufficientPrivilegeError as exc:
            user = await conn.fetchval("SELECT session_user")
            raise CliError(
                f"permission denied: database role {user!r} may not file requests "
                f"(it needs pipectl_operator): {exc}"
            ) from exc
        if not args.wait:
            alive = await store.alive_agents(conn)
            return _report_filed(args, request, len(alive))
        try:
            finished = await wait_for_request(conn, request.id, args.timeout)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            raise CliError(
                f"request {request.id} was filed, but the connection to the database was lost"
                f" while waiting for its outcome ({describe(exc)}); an agent runs it when"
                " the database is back: see pipectl status",
                exit_code=EXIT_UNKNOWN,
            ) from exc
    return _report_outcome(args, request, finished)


def _report_filed(args: argparse.Namespace, request: Request, agents_alive: int) -> int:
    """What happens next depends on whether an agent is alive to take the request: it stays
    queued (a row) until one is, so say so rather than promise it is picked up."""
    if args.json:
        print_json(request_json(request) | {"agents_alive": agents_alive})
        return EXIT_OK
    filed = (
        f"request {request.id} filed: {request.kind} {visible(request.target)} "
        f"(as {visible(request.requested_by)})"
    )
    if agents_alive:
        console().print(f"{filed}; an agent picks it up at once")
    else:
        console().print(
            f"{filed}; queued; no agent alive: it runs when an agent starts "
            "(pipectl agent; pipectl status lists the agents)"
        )
    return EXIT_OK


def _report_outcome(args: argparse.Namespace, filed: Request, finished: Request | None) -> int:
    if finished is None or finished.done_at is None:
        message = (
            f"request {filed.id} not finished after {args.timeout:g}s; it stays queued and "
            "runs when an agent takes it (is one running? see pipectl status)"
        )
        if args.json:
            print_json({**request_json(finished or filed), "timed_out": True})
        else:
            console(stderr=True).print(message)
        return EXIT_UNKNOWN
    if args.json:
        print_json(request_json(finished))
    else:
        style = "green" if finished.outcome == Outcome.SUCCEEDED else "red"
        took = (finished.done_at - finished.created_at).total_seconds()
        console().print(
            Text(f"request {finished.id} {finished.outcome} in {seconds(took)}: ", style=style)
            + literal(finished.detail or "")
        )
    return EXIT_OK if finished.outcome == Outcome.SUCCEEDED else EXIT_FAIL


def request_json(request: Request) -> dict[str, Any]:
    """A request for scripts. `args` is the kind's arguments, or null with `args_error`
    saying why when the row holds arguments the agent rejects."""
    try:
        args: dict[str, Any] | None = parse_args(request.kind, request.args).to_json()
        problem = None
    except ArgsError as exc:
        args, problem = None, str(exc)
    return {
        "id": request.id,
        "kind": str(request.kind),
        "target": request.target,
        "args": args,
        "args_error": problem,
        "reason": request.reason,
        "requested_by": request.requested_by,
        "created_at": request.created_at,
        "state": request.state,
        "claimed_by": request.claimed_by,
        "claimed_at": request.claimed_at,
        "done_at": request.done_at,
        "outcome": str(request.outcome) if request.outcome else None,
        "detail": request.detail,
        # The trace the filing span began (and the agent continued), to look up in a
        # tracing backend; null when the filer exported no spans.
        "trace_id": request.traceparent.split("-")[1] if request.traceparent else None,
    }


# ------------------------------------------------------------------------------- dry run


async def show_rerun_plan(args: argparse.Namespace) -> int:
    """`pipectl rerun STEP [--downstream] --dry-run`: the plan the console's rerun dialog
    shows and the agent executes (`Dag.rerun` over the published steps). Reads only, so a
    viewer role can ask."""
    if args.wait:
        raise CliError("--dry-run files no request, so there is nothing to --wait for")
    config = connect_config(args)
    async with connection(config, "pipectl rerun --dry-run") as conn:
        await ensure_current(conn)
        try:
            plan = await rerun_plan(conn, args.step, bool(args.downstream))
        except CycleError as exc:
            raise CliError(f"the published steps form a dependency cycle: {exc}") from None
        if plan is None:
            raise CliError(await _unknown_step(conn, args.step))
    if args.json:
        print_json(plan_json(plan))
    else:
        render_plan(plan, datetime.now(UTC))
    return EXIT_OK


def render_plan(plan: RerunPlan, now: datetime) -> None:
    out = console()
    count = len(plan.steps)
    what = f"{plan.step} and its downstream" if plan.downstream else plan.step
    out.print(
        Text(
            f"A rerun of {what} would run {count} step{'s' if count != 1 else ''}, in this "
            "order (dry run: nothing filed)"
        )
    )
    table = Table(header_style="bold", box=None)
    for column in ("#", "step", "p50", "p95", "runs", "last run"):
        table.add_column(
            column, justify="right" if column in ("#", "p50", "p95", "runs") else "left"
        )
    for position, planned in enumerate(plan.steps, 1):
        expected = planned.expected
        name = Text(planned.name)
        if planned.paused:
            name.append(" (paused)", style="yellow")
        last = planned.last_run
        last_text = Text("never", style="dim")
        if last is not None:
            state = str(last.status)
            last_text = Text(status_text(state), style=STATUS_STYLE.get(state, ""))
            last_text.append(f" {age(last.finished_at or last.queued_at, now)}", style="dim")
        if expected.samples:
            durations = (seconds(expected.p50), seconds(expected.p95), str(expected.samples))
        else:
            durations = ("no history", "", "0")
        table.add_row(str(position), name, *durations, last_text)
    out.print(table)
    if plan.expected_p50 is None:
        out.print("expected in total: unknown (a step has no successful run yet)")
    else:
        out.print(
            f"expected in total: p50 {seconds(plan.expected_p50)}, p95 {seconds(plan.expected_p95)}"
        )
    if any(s.paused for s in plan.steps):
        out.print("paused steps run too: a manual rerun ignores the pause")


def plan_json(plan: RerunPlan) -> dict[str, Any]:
    return {
        "step": plan.step,
        "downstream": plan.downstream,
        "dry_run": True,
        "steps": [
            {
                "position": position,
                "name": s.name,
                "expected_p50_s": s.expected.p50,
                "expected_p95_s": s.expected.p95,
                "history_runs": s.expected.samples,
                "paused": s.paused,
                "last_run": run_json(s.last_run) if s.last_run else None,
            }
            for position, s in enumerate(plan.steps, 1)
        ],
        "expected_p50_s": plan.expected_p50,
        "expected_p95_s": plan.expected_p95,
    }


async def wait_for_request(conn: Conn, request_id: int, limit: float) -> Request | None:
    """Follow a request to its outcome: woken by NOTIFY, with a slow poll as a safety net."""
    changed = asyncio.Event()

    def on_change(*args: object) -> None:
        payload = args[-1]
        if isinstance(payload, str):
            # Anyone may NOTIFY this channel: a payload that is not our JSON object is noise,
            # and the slow poll below does not depend on notifications anyway.
            with contextlib.suppress(ValueError, RecursionError):
                data = json.loads(payload)
                if (
                    isinstance(data, dict)
                    and data.get("table") == "requests"
                    and data.get("id") == request_id
                ):
                    changed.set()

    await conn.add_listener("pipectl_changes", on_change)
    deadline = time.monotonic() + limit
    try:
        while True:
            request = await store.get_request(conn, request_id)
            if request is None or request.done_at is not None:
                return request
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return request
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 2.0))
            changed.clear()
    finally:
        await conn.remove_listener("pipectl_changes", on_change)
