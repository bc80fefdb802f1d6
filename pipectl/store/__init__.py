"""The only code that reads and writes the pipectl schema.

Every function takes a connection or a pool (`DB`) so callers choose the transaction scope.
Grouped by table: agents, definitions (steps, checks), runs, requests, results, samples, events,
and the read models the console and CLI show.
"""

from pipectl.store.agents import (
    LostAgent,
    alive_agents,
    heartbeat,
    reap_dead_predecessors,
    reap_lost_agents,
    register_agent,
    stop_agent,
)
from pipectl.store.base import DB
from pipectl.store.definitions import (
    CheckDefinition,
    CheckState,
    StepDefinition,
    StepState,
    check_states,
    claim_check_ticks,
    publish_checks,
    publish_steps,
    set_next_run,
    set_paused,
    set_silence,
    step_states,
)
from pipectl.store.events import add_event, recent_events
from pipectl.store.requests import (
    claim_requests,
    create_request,
    finish_request,
    get_request,
    list_requests,
    release_claims,
    release_request,
    request_has_runs,
)
from pipectl.store.results import (
    BaselineRow,
    StoredResult,
    last_baseline,
    latest_baselines,
    recent_results,
    record_result,
)
from pipectl.store.retention import prune
from pipectl.store.runs import (
    claim_tick,
    close_unfinished_runs,
    create_run,
    finish_run,
    get_run,
    has_unfinished,
    last_success,
    latest_outcomes,
    recent_runs,
    start_run,
    tick_exists,
)
from pipectl.store.samples import add_samples, has_seed, read_series, read_windows
from pipectl.store.summaries import refresh_summary
from pipectl.store.views import CheckRow, StatusSnapshot, StepRow, status_snapshot

__all__ = [
    "DB",
    "BaselineRow",
    "CheckDefinition",
    "CheckRow",
    "CheckState",
    "LostAgent",
    "StatusSnapshot",
    "StepDefinition",
    "StepRow",
    "StepState",
    "StoredResult",
    "add_event",
    "add_samples",
    "alive_agents",
    "check_states",
    "claim_check_ticks",
    "claim_requests",
    "claim_tick",
    "close_unfinished_runs",
    "create_request",
    "create_run",
    "finish_request",
    "finish_run",
    "get_request",
    "get_run",
    "has_seed",
    "has_unfinished",
    "heartbeat",
    "last_baseline",
    "last_success",
    "latest_baselines",
    "latest_outcomes",
    "list_requests",
    "prune",
    "publish_checks",
    "publish_steps",
    "read_series",
    "read_windows",
    "reap_dead_predecessors",
    "reap_lost_agents",
    "recent_events",
    "recent_results",
    "recent_runs",
    "record_result",
    "refresh_summary",
    "register_agent",
    "release_claims",
    "release_request",
    "request_has_runs",
    "set_next_run",
    "set_paused",
    "set_silence",
    "start_run",
    "status_snapshot",
    "step_states",
    "stop_agent",
    "tick_exists",
]
