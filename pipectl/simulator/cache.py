"""Real cache traffic against Redis/Valkey, shaped like APES' L2 cache.

Keys carry APES' prefixes (no global prefix). A GET either asks for a key the cache should
still hold (a hit, unless Redis lost it) or for one it never saw (a miss, then a SET, as the
application fills its cache). The share of the first kind sets the hit ratio, so the ratio
stays realistic at any rate. In a miss storm, GETs go to keys that do not exist and nothing
is filled in.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pipectl.simulator.catalog import ANALYTICS_QUERIES, ML_MODELS, SAMPLE_PROMPT_SPECS

HIT_TARGET = 0.91  # share of GETs that ask for a key the cache should hold
STORM_HIT_TARGET = 0.03
REFRESH_SHARE = 0.05  # extra SETs (sessions refreshed) per GET
POOL_CAP = 3000  # remembered keys per prefix
WARM_KEYS = 60  # keys per prefix filled when the run starts


@dataclass(frozen=True)
class Prefix:
    name: str
    ttl_s: int
    share: float  # of background GETs
    value_bytes: int


PREFIXES: dict[str, Prefix] = {
    p.name: p
    for p in (
        Prefix("session", 1800, 0.30, 220),
        Prefix("rule_selection", 900, 0.25, 160),
        Prefix("analytics_query", 300, 0.20, 900),
        Prefix("ml_inference", 600, 0.15, 120),
        Prefix("prompt_improvement", 3600, 0.10, 700),
    )
}


class KeyPool:
    """Keys we SET and believe still cached (until their TTL passes), bounded in size."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._keys: list[str] = []
        self._expires: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, ttl_s: float) -> None:
        if key in self._expires:
            self._expires[key] = time.monotonic() + ttl_s
            return
        if len(self._keys) >= POOL_CAP:
            index = self.rng.randrange(len(self._keys))
            del self._expires[self._keys[index]]
            self._keys[index] = key
        else:
            self._keys.append(key)
        self._expires[key] = time.monotonic() + ttl_s

    def pick(self) -> str | None:
        """A key that should still be cached (expired ones are dropped on the way)."""
        now = time.monotonic() + 1.0  # keep clear of keys about to expire
        for _ in range(4):
            if not self._keys:
                return None
            index = self.rng.randrange(len(self._keys))
            key = self._keys[index]
            if self._expires[key] > now:
                return key
            self._keys[index] = self._keys[-1]
            self._keys.pop()
            del self._expires[key]
        return None

    def clear(self) -> None:
        self._keys.clear()
        self._expires.clear()


@dataclass
class CacheCounters:
    gets: int = 0
    hits: int = 0
    misses: int = 0
    sets: int = 0  # SETs and EXPIREs


class CacheTraffic:
    """GETs and SETs against Redis; counts what it saw."""

    def __init__(self, url: str, rng: random.Random) -> None:
        self.rng = rng
        self.counters = CacheCounters()
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            # One immediate retry re-opens a pooled connection the server closed; real
            # outages are the caller's business (it backs off).
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self.pools: dict[str, KeyPool] = {name: KeyPool(rng) for name in PREFIXES}

    async def close(self) -> None:
        await self.client.aclose()

    def _new_key(self, prefix: str) -> str:
        token = secrets.token_hex(8)
        if prefix == "session":
            return f"session:sess_{token}"
        if prefix == "rule_selection":
            return f"rule_selection:{self.rng.choice(SAMPLE_PROMPT_SPECS).prompt_type}:{token}"
        if prefix == "analytics_query":
            return f"analytics_query:{self.rng.choice(ANALYTICS_QUERIES)}:{token}"
        if prefix == "ml_inference":
            return f"ml_inference:{self.rng.choice(ML_MODELS)}:{token}"
        return f"{prefix}:{token}"

    def _value(self, prefix: str) -> bytes:
        size = PREFIXES[prefix].value_bytes
        body = {"v": 1, "at": time.time(), "data": "x" * self.rng.randint(size // 2, size)}
        return json.dumps(body).encode()

    def _ttl(self, prefix: str) -> int:
        ttl = PREFIXES[prefix].ttl_s
        return self.rng.randint(ttl * 3 // 4, ttl)

    def _choose(self, prefix: str, storm: bool, hit_target: float) -> str:
        target = STORM_HIT_TARGET if storm else hit_target
        if self.rng.random() < target:
            known = self.pools[prefix].pick()
            if known is not None:
                return known
        return self._new_key(prefix)

    async def warm(self) -> None:
        """Fill the cache a little, as a running application would have."""
        pipe = self.client.pipeline(transaction=False)
        for prefix in PREFIXES:
            for _ in range(WARM_KEYS):
                key = self._new_key(prefix)
                ttl = self._ttl(prefix)
                pipe.set(key, self._value(prefix), ex=ttl)
                self.pools[prefix].add(key, ttl)
        await pipe.execute()
        self.counters.sets += WARM_KEYS * len(PREFIXES)

    async def get_many(
        self, prefixes: list[str], storm: bool, hit_target: float = HIT_TARGET
    ) -> list[bool]:
        """One GET per entry of `prefixes`; misses are filled with a SET (not in a storm).

        Returns, in order, whether each GET hit. Raises the client's error when Redis
        cannot be reached.
        """
        if not prefixes:
            return []
        keys = [self._choose(prefix, storm, hit_target) for prefix in prefixes]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await pipe.execute()
        hits = [value is not None for value in values]
        self.counters.gets += len(keys)
        self.counters.hits += sum(hits)
        self.counters.misses += len(keys) - sum(hits)
        fill = self.client.pipeline(transaction=False)
        filled = 0
        for prefix, key, hit in zip(prefixes, keys, hits, strict=True):
            if hit and prefix == "session" and self.rng.random() < REFRESH_SHARE * 3:
                fill.expire(key, PREFIXES[prefix].ttl_s)  # an active session is kept alive
                filled += 1
            elif not hit and not storm:
                ttl = self._ttl(prefix)
                fill.set(key, self._value(prefix), ex=ttl)
                self.pools[prefix].add(key, ttl)
                filled += 1
        if filled:
            await fill.execute()
            self.counters.sets += filled
        return hits

    async def background(self, operations: int, storm: bool) -> int:
        """About `operations` commands of the mixed key families (GETs plus their SETs);
        returns the number of GETs sent."""
        gets = round(operations / (1 + (1 - HIT_TARGET) + REFRESH_SHARE))
        if gets <= 0:
            return 0
        names = list(PREFIXES)
        shares = [PREFIXES[n].share for n in names]
        await self.get_many(self.rng.choices(names, shares, k=gets), storm)
        return gets
