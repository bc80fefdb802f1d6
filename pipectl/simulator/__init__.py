"""The APES simulator: live activity, history and injectable faults for `pipectl demo` and
for tests.

    sim = ApesSimulator(dsn, redis_url, seed=1, rate=1.0)
    await sim.setup()
    await sim.backfill(days=30, progress=callback)
    await sim.inject("stall", duration=timedelta(minutes=2), table="user_feedback")
    await sim.run(stop_event)

Another process injects faults with `send_fault` / `send_clear` (or `pipectl fault`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipectl.simulator.backfill import BackfillReport
    from pipectl.simulator.cache import CacheCounters
    from pipectl.simulator.catalog import PROMPT_MARKERS, RULES, SAMPLE_PROMPTS
    from pipectl.simulator.control import CHANNEL, ControlError, send_clear, send_fault
    from pipectl.simulator.engine import ApesSimulator, SimulatorError, SimulatorStats
    from pipectl.simulator.faults import FAULTS, FaultError, UnknownFaultError
    from pipectl.simulator.rhythm import FEED_NAMES

# Each name's module, imported on first use: `pipectl fault list` needs the faults' table
# only, not the engine, Redis, asyncpg or the config that come with the rest.
_HOME = {
    "BackfillReport": "backfill",
    "CacheCounters": "cache",
    "PROMPT_MARKERS": "catalog",
    "RULES": "catalog",
    "SAMPLE_PROMPTS": "catalog",
    "CHANNEL": "control",
    "ControlError": "control",
    "send_clear": "control",
    "send_fault": "control",
    "ApesSimulator": "engine",
    "SimulatorError": "engine",
    "SimulatorStats": "engine",
    "FAULTS": "faults",
    "FaultError": "faults",
    "UnknownFaultError": "faults",
    "FEED_NAMES": "rhythm",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "CHANNEL",
    "FAULTS",
    "FEED_NAMES",
    "PROMPT_MARKERS",
    "RULES",
    "SAMPLE_PROMPTS",
    "ApesSimulator",
    "BackfillReport",
    "CacheCounters",
    "ControlError",
    "FaultError",
    "SimulatorError",
    "SimulatorStats",
    "UnknownFaultError",
    "send_clear",
    "send_fault",
]
