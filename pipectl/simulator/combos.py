"""rule_combinations: one row per (rule set, prompt type), kept as running averages.

Observations of multi-rule requests are folded into `Combination` aggregates in memory, then
merged into the table: existing rows are updated in place (their sample_size grows, their
averages move), unseen combinations are inserted.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from pipectl.simulator.rows import RULE_COMBINATION_COLUMNS, Observation, dumps, naive_utc

Key = tuple[tuple[str, ...], str]


@dataclass
class Combination:
    """Running averages of one rule set on one prompt type."""

    rule_set: tuple[str, ...]
    prompt_type: str
    first_seen: datetime
    last_seen: datetime
    sample_size: int = 0
    combined: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.rule_set, self.prompt_type)

    def add(self, obs: Observation) -> None:
        n = self.sample_size
        self.combined = (self.combined * n + obs.combined) / (n + 1)
        for rule, score in obs.scores.items():
            self.scores[rule] = (self.scores.get(rule, score) * n + score) / (n + 1)
        self.sample_size = n + 1
        self.first_seen = min(self.first_seen, obs.at)
        self.last_seen = max(self.last_seen, obs.at)

    def merge(self, n: int, combined: float, scores: dict[str, float]) -> None:
        """Fold in the aggregate stored in the table (n samples) before this one."""
        total = n + self.sample_size
        if n <= 0 or total <= 0:
            return
        self.combined = (combined * n + self.combined * self.sample_size) / total
        for rule in set(scores) | set(self.scores):
            stored = scores.get(rule, self.scores.get(rule, 0.0))
            mine = self.scores.get(rule, stored)
            self.scores[rule] = (stored * n + mine * self.sample_size) / total
        self.sample_size = total

    @property
    def confidence(self) -> float:
        return round(1 - 1 / math.sqrt(self.sample_size + 1), 4)

    def record(self) -> tuple[object, ...]:
        return (
            uuid.uuid4(),
            dumps(list(self.rule_set)),
            self.prompt_type,
            round(self.combined, 4),
            dumps({k: round(v, 4) for k, v in sorted(self.scores.items())}),
            self.sample_size,
            self.confidence,
            naive_utc(self.first_seen),
            naive_utc(self.last_seen),
        )


def aggregate(observations: Iterable[Observation], into: dict[Key, Combination]) -> None:
    for obs in observations:
        key = (obs.rule_set, obs.prompt_type)
        combo = into.get(key)
        if combo is None:
            combo = into[key] = Combination(obs.rule_set, obs.prompt_type, obs.at, obs.at)
        combo.add(obs)


async def upsert(conn: asyncpg.Connection, combos: dict[Key, Combination]) -> tuple[int, int]:
    """Merge aggregates into rule_combinations; returns (rows updated, rows inserted)."""
    if not combos:
        return 0, 0
    sets = sorted({dumps(list(c.rule_set)) for c in combos.values()})
    async with conn.transaction():
        existing = await conn.fetch(
            "SELECT id, rule_set::text AS rule_set, prompt_type, combined_effectiveness,"
            " individual_scores::text AS scores, sample_size FROM public.rule_combinations"
            " WHERE rule_set = ANY($1::jsonb[]) ORDER BY id FOR UPDATE",
            sets,
        )
        updates = []
        seen: set[Key] = set()
        for row in existing:
            key = (tuple(json.loads(row["rule_set"])), row["prompt_type"])
            combo = combos.get(key)
            if combo is None or key in seen:  # duplicates: the oldest row carries the average
                continue
            seen.add(key)
            scores = json.loads(row["scores"]) if row["scores"] else {}
            combo.merge(
                int(row["sample_size"] or 0),
                float(row["combined_effectiveness"] or 0.0),
                scores if isinstance(scores, dict) else {},
            )
            record = combo.record()
            updates.append((row["id"], record[3], record[4], record[5], record[6], record[8]))
        if updates:
            await conn.executemany(
                "UPDATE public.rule_combinations SET combined_effectiveness = $2,"
                " individual_scores = $3::jsonb, sample_size = $4, statistical_confidence = $5,"
                " updated_at = $6 WHERE id = $1",
                updates,
            )
        new = [c.record() for key, c in combos.items() if key not in seen]
        if new:
            await conn.copy_records_to_table(
                "rule_combinations",
                schema_name="public",
                records=new,
                columns=list(RULE_COMBINATION_COLUMNS),
            )
    return len(updates), len(new)
