"""The only code that reads and writes the pipectl schema.

Every function takes a connection or a pool (`DB`) so callers choose the transaction scope.
Grouped by table: agents, definitions (steps, checks), runs, requests, results, samples, events,
and the read models the console and CLI show.
"""

from pipectl.store.agents import (
    LostAgent,
    alive_agents,
    heartbeat,
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
    release_request,
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
    create_run,
    fail_unfinished_runs,
    finish_run,
    get_run,
    last_success,
    recent_runs,
    start_run,
)
from pipectl.store.samples import add_samples, has_seed, read_series, read_windows

__all__ = [
    "DB",
    "BaselineRow",
    "CheckDefinition",
    "CheckState",
    "LostAgent",
    "StepDefinition",
    "StepState",
    "StoredResult",
    "add_event",
    "add_samples",
    "alive_agents",
    "check_states",
    "claim_requests",
    "claim_tick",
    "create_request",
    "create_run",
    "fail_unfinished_runs",
    "finish_request",
    "finish_run",
    "get_request",
    "get_run",
    "has_seed",
    "heartbeat",
    "last_baseline",
    "last_success",
    "latest_baselines",
    "list_requests",
    "prune",
    "publish_checks",
    "publish_steps",
    "read_series",
    "read_windows",
    "reap_lost_agents",
    "recent_events",
    "recent_results",
    "recent_runs",
    "record_result",
    "register_agent",
    "release_request",
    "set_next_run",
    "set_paused",
    "set_silence",
    "start_run",
    "step_states",
    "stop_agent",
]
