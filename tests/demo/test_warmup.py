"""The demo's warm-up: the agent starts judging once every watched feed has a live row."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pipectl.cli.demo import RANDOM_FAULTS, demo_config, warm_up, watched_feeds
from pipectl.simulator import FAULTS, ApesSimulator
from tests.simulator.support import running

FEEDS = [
    "discovered_patterns",
    "prompt_improvement_sessions",
    "rule_combinations",
    "rule_performance",
    "user_feedback",
]


def test_the_demo_watches_every_feed_a_freshness_check_reads() -> None:
    config = demo_config("postgresql://demo@127.0.0.1/apes", "redis://127.0.0.1:6379/0").config
    assert watched_feeds(config) == FEEDS


def test_random_faults_draw_from_every_fault() -> None:
    """`--faults random` (the soak) breaks the demo every way the simulator can, a held
    refresh (`broken_input`) included; the healthy hour runs without it."""
    assert sorted(RANDOM_FAULTS) == sorted(FAULTS)


async def test_the_warm_up_lasts_until_each_watched_feed_has_a_live_row(database: str) -> None:
    sim = ApesSimulator(database, None, seed=21, rate=100, rhythm=False)
    async with running(sim):
        done = await warm_up(sim, FEEDS, asyncio.Event(), minimum=0, limit=600)
        stats = sim.stats()
    assert done.waiting_for == ()
    for feed in FEEDS:
        assert stats.rows.get(feed, 0) + stats.updates.get(feed, 0) > 0, feed


async def test_the_warm_up_is_bounded_and_names_the_feeds_still_silent(database: str) -> None:
    sim = ApesSimulator(database, None, seed=22, rate=100, rhythm=False)
    await sim.inject("stall", duration=timedelta(hours=1), table="discovered_patterns")
    async with running(sim):
        done = await warm_up(sim, FEEDS, asyncio.Event(), minimum=0, limit=5)
        stats = sim.stats()
    assert done.waiting_for == ("discovered_patterns",)
    assert done.seconds >= 5  # it waited out its limit, not less
    assert stats.rows.get("rule_performance", 0) > 0
    assert "discovered_patterns" not in stats.rows


async def test_a_stop_ends_the_warm_up_at_once(database: str) -> None:
    sim = ApesSimulator(database, None, seed=23, rate=100, rhythm=False)
    stop = asyncio.Event()
    stop.set()
    done = await warm_up(sim, FEEDS, stop, minimum=600, limit=600)
    assert done.waiting_for == tuple(FEEDS)  # never ran: nothing written
