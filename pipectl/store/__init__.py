"""The only code that reads and writes the pipectl schema.

Every function takes a connection or a pool (`DB`) so callers choose the transaction scope.
Grouped by table: agents, definitions (steps, checks), runs, requests, results, samples, events,
and the read models the console and CLI show.

Importing this package loads none of its modules: each name is imported from its module when
first used (PEP 562), so a verb loads only the tables it touches (`pipectl check` needs the
results and definitions, not the requests or the console's read models).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipectl.store.agents import (
        LIVENESS_NAMESPACE,
        Beat,
        LostAgent,
        Retry,
        alive_agents,
        heartbeat,
        hold_liveness,
        reap_departed_agents,
        reap_lost_agents,
        register_agent,
        release_liveness,
        stop_agent,
    )
    from pipectl.store.base import DB
    from pipectl.store.definitions import (
        PUBLISH_LOCK,
        CheckDefinition,
        CheckState,
        Retired,
        StepDefinition,
        StepState,
        agent_published,
        check_states,
        claim_check_ticks,
        publish,
        publish_checks,
        publish_steps,
        retire_unpublished,
        set_next_run,
        set_paused,
        set_silence,
        step_states,
    )
    from pipectl.store.events import add_event, recent_events
    from pipectl.store.exported import CheckExport, SharedState, StepExport, shared_state
    from pipectl.store.own_reads import (
        DATABASE_KEY,
        Reads,
        measure_own_reads,
        own_reads_between,
        pending_reads,
        prune_own_reads,
        reads_between,
        record_own_reads,
    )
    from pipectl.store.requests import (
        claim_requests,
        create_request,
        finish_request,
        get_request,
        list_requests,
        release_claims,
        release_request,
        request_has_runs,
        request_reasons,
    )
    from pipectl.store.results import (
        BaselineRow,
        StoredResult,
        count_results,
        last_baseline,
        latest_baselines,
        recent_results,
        record_result,
    )
    from pipectl.store.retention import prune
    from pipectl.store.runs import (
        TickClaim,
        claim_tick,
        close_unfinished_runs,
        create_run,
        finish_run,
        get_run,
        has_unfinished,
        last_success,
        latest_unfinished,
        recent_runs,
        run_counts,
        start_run,
        tick_exists,
    )
    from pipectl.store.samples import add_samples, has_seed, read_series, read_windows
    from pipectl.store.summaries import refresh_summary
    from pipectl.store.views import (
        CheckRow,
        StatusSnapshot,
        StepRow,
        latest_outcomes,
        state_run,
        state_runs,
        status_snapshot,
    )

# Where each name lives (a test checks it against the imports above).
_HOME: dict[str, str] = {
    **dict.fromkeys(
        (
            "LIVENESS_NAMESPACE",
            "Beat",
            "LostAgent",
            "Retry",
            "alive_agents",
            "heartbeat",
            "hold_liveness",
            "reap_departed_agents",
            "reap_lost_agents",
            "register_agent",
            "release_liveness",
            "stop_agent",
        ),
        "agents",
    ),
    **dict.fromkeys(("DB",), "base"),
    **dict.fromkeys(
        (
            "PUBLISH_LOCK",
            "CheckDefinition",
            "CheckState",
            "Retired",
            "StepDefinition",
            "StepState",
            "agent_published",
            "check_states",
            "claim_check_ticks",
            "publish",
            "publish_checks",
            "publish_steps",
            "retire_unpublished",
            "set_next_run",
            "set_paused",
            "set_silence",
            "step_states",
        ),
        "definitions",
    ),
    **dict.fromkeys(("add_event", "recent_events"), "events"),
    **dict.fromkeys(("CheckExport", "SharedState", "StepExport", "shared_state"), "exported"),
    **dict.fromkeys(
        (
            "DATABASE_KEY",
            "Reads",
            "measure_own_reads",
            "own_reads_between",
            "pending_reads",
            "prune_own_reads",
            "reads_between",
            "record_own_reads",
        ),
        "own_reads",
    ),
    **dict.fromkeys(
        (
            "claim_requests",
            "create_request",
            "finish_request",
            "get_request",
            "list_requests",
            "release_claims",
            "release_request",
            "request_has_runs",
            "request_reasons",
        ),
        "requests",
    ),
    **dict.fromkeys(
        (
            "BaselineRow",
            "StoredResult",
            "count_results",
            "last_baseline",
            "latest_baselines",
            "recent_results",
            "record_result",
        ),
        "results",
    ),
    **dict.fromkeys(("prune",), "retention"),
    **dict.fromkeys(
        (
            "TickClaim",
            "claim_tick",
            "close_unfinished_runs",
            "create_run",
            "finish_run",
            "get_run",
            "has_unfinished",
            "last_success",
            "latest_unfinished",
            "recent_runs",
            "run_counts",
            "start_run",
            "tick_exists",
        ),
        "runs",
    ),
    **dict.fromkeys(("add_samples", "has_seed", "read_series", "read_windows"), "samples"),
    **dict.fromkeys(("refresh_summary",), "summaries"),
    **dict.fromkeys(
        (
            "CheckRow",
            "StatusSnapshot",
            "StepRow",
            "latest_outcomes",
            "state_run",
            "state_runs",
            "status_snapshot",
        ),
        "views",
    ),
}


if not TYPE_CHECKING:  # mypy reads the imports above, and flags a name that is not there

    def __getattr__(name: str) -> Any:
        module = _HOME.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # found at once next time
        return value


__all__ = [
    "DATABASE_KEY",
    "DB",
    "LIVENESS_NAMESPACE",
    "PUBLISH_LOCK",
    "BaselineRow",
    "Beat",
    "CheckDefinition",
    "CheckExport",
    "CheckRow",
    "CheckState",
    "LostAgent",
    "Reads",
    "Retired",
    "Retry",
    "SharedState",
    "StatusSnapshot",
    "StepDefinition",
    "StepExport",
    "StepRow",
    "StepState",
    "StoredResult",
    "TickClaim",
    "add_event",
    "add_samples",
    "agent_published",
    "alive_agents",
    "check_states",
    "claim_check_ticks",
    "claim_requests",
    "claim_tick",
    "close_unfinished_runs",
    "count_results",
    "create_request",
    "create_run",
    "finish_request",
    "finish_run",
    "get_request",
    "get_run",
    "has_seed",
    "has_unfinished",
    "heartbeat",
    "hold_liveness",
    "last_baseline",
    "last_success",
    "latest_baselines",
    "latest_outcomes",
    "latest_unfinished",
    "list_requests",
    "measure_own_reads",
    "own_reads_between",
    "pending_reads",
    "prune",
    "prune_own_reads",
    "publish",
    "publish_checks",
    "publish_steps",
    "read_series",
    "read_windows",
    "reads_between",
    "reap_departed_agents",
    "reap_lost_agents",
    "recent_events",
    "recent_results",
    "recent_runs",
    "record_own_reads",
    "record_result",
    "refresh_summary",
    "register_agent",
    "release_claims",
    "release_liveness",
    "release_request",
    "request_has_runs",
    "request_reasons",
    "retire_unpublished",
    "run_counts",
    "set_next_run",
    "set_paused",
    "set_silence",
    "shared_state",
    "start_run",
    "state_run",
    "state_runs",
    "status_snapshot",
    "step_states",
    "stop_agent",
    "tick_exists",
]
