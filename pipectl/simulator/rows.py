"""Rows of the APES tables, built in memory from a random source (no I/O here).

The same builders serve the backfill (COPY of many hours) and the live run (COPY of one
tick). Timestamps come in timezone-aware; `timestamp WITHOUT time zone` columns get the UTC
wall-clock value, explicitly, so the server's TimeZone setting never matters.

Faults change rows here: `Effects.out_of_range` and `Effects.nulls` give the share of rows
that get a bad value. Every bad value (and every NULL in a column that faults can empty) is
counted in the batch, so tests can compare the counts with SQL exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipectl.simulator.catalog import (
    AGENT_TYPES,
    CLIENTS,
    DISCOVERY_METHODS,
    PATTERN_TEMPLATES,
    SAMPLE_PROMPT_SPECS,
    USER_NOTES,
    RuleSpec,
    SamplePrompt,
)
from pipectl.simulator.faults import Effects

Record = tuple[Any, ...]

RULE_PERFORMANCE_COLUMNS = (
    "rule_id",
    "rule_name",
    "prompt_id",
    "prompt_type",
    "prompt_category",
    "improvement_score",
    "confidence_level",
    "execution_time_ms",
    "rule_parameters",
    "prompt_characteristics",
    "before_metrics",
    "after_metrics",
    "created_at",
    "updated_at",
)
USER_FEEDBACK_COLUMNS = (
    "feedback_id",
    "original_prompt",
    "improved_prompt",
    "user_rating",
    "applied_rules",
    "user_context",
    "improvement_areas",
    "user_notes",
    "session_id",
    "created_at",
)
PROMPT_IMPROVEMENT_COLUMNS = (
    "original_prompt",
    "enhanced_prompt",
    "applied_rules",
    "response_time_ms",
    "cache_hit_level",
    "agent_type",
    "session_timestamp",
    "anonymized_user_hash",
    "created_at",
)
IMPROVEMENT_SESSION_COLUMNS = (
    "session_id",
    "user_id",
    "original_prompt",
    "final_prompt",
    "rules_applied",
    "iteration_count",
    "total_improvement_score",
    "session_metadata",
    "started_at",
    "completed_at",
    "status",
)
DISCOVERED_PATTERN_COLUMNS = (
    "pattern_id",
    "pattern_name",
    "pattern_description",
    "pattern_rule",
    "discovery_method",
    "effectiveness_score",
    "support_count",
    "confidence_interval",
    "validation_status",
    "discovered_at",
    "validated_at",
)
RULE_COMBINATION_COLUMNS = (
    "combination_id",
    "rule_set",
    "prompt_type",
    "combined_effectiveness",
    "individual_scores",
    "sample_size",
    "statistical_confidence",
    "created_at",
    "updated_at",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "rule_performance": RULE_PERFORMANCE_COLUMNS,
    "user_feedback": USER_FEEDBACK_COLUMNS,
    "prompt_improvement_sessions": PROMPT_IMPROVEMENT_COLUMNS,
    "improvement_sessions": IMPROVEMENT_SESSION_COLUMNS,
    "discovered_patterns": DISCOVERED_PATTERN_COLUMNS,
    "rule_combinations": RULE_COMBINATION_COLUMNS,
}

# Median and spread (lognormal sigma) of response_time_ms per cache level; SLA is 200 ms.
RESPONSE_MS = {"L1": (2.0, 0.5), "L2": (8.0, 0.5), "L3": (45.0, 0.5), "MISS": (135.0, 0.55)}
MAX_RESPONSE_MS = 29_999
MAX_EXECUTION_MS = 5_000
UNKNOWN_RULES = (("legacy_clarity_v0", "Legacy Clarity Rule"), ("exp_rule_x", "Experimental X"))
USER_COUNT = 180
PLAYBOOK_SIZE = 6  # rules the selector considers for one prompt type


def naive_utc(moment: datetime) -> datetime:
    """The UTC wall-clock value for a `timestamp WITHOUT time zone` column."""
    if moment.tzinfo is None:
        raise ValueError("timezone-aware datetime required")
    return moment.astimezone(UTC).replace(tzinfo=None)


def dumps(value: Any) -> str:
    """JSON text for a jsonb column (binary COPY takes jsonb as text)."""
    return json.dumps(value, separators=(",", ":"))


def clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


@dataclass
class Batch:
    """Records for one table, plus what was deliberately wrong in them."""

    table: str
    records: list[Record] = field(default_factory=list)
    out_of_range: Counter[str] = field(default_factory=Counter)  # "table.column" -> rows
    nulls: Counter[str] = field(default_factory=Counter)  # "table.column" -> NULLs written

    @property
    def columns(self) -> tuple[str, ...]:
        return COLUMNS[self.table]

    def extend(self, other: Batch) -> None:
        self.records.extend(other.records)
        self.out_of_range.update(other.out_of_range)
        self.nulls.update(other.nulls)


@dataclass(frozen=True)
class Request:
    """One improvement request: a prompt and the rules applied to it, with their scores."""

    prompt: SamplePrompt
    rules: tuple[RuleSpec, ...]
    scores: tuple[float, ...]
    prompt_id: uuid.UUID

    @property
    def applied_rules(self) -> list[dict[str, str]]:
        return [{"rule_id": r.rule_id, "rule_name": r.rule_name} for r in self.rules]

    @property
    def mean_score(self) -> float:
        return sum(self.scores) / len(self.scores)

    @property
    def improved_text(self) -> str:
        return improve(self.prompt.text, self.rules)

    @property
    def areas(self) -> list[str]:
        return sorted({area for rule in self.rules for area in rule.areas})


@dataclass(frozen=True)
class Observation:
    """A multi-rule request as rule_combinations sees it."""

    rule_set: tuple[str, ...]
    prompt_type: str
    combined: float
    scores: dict[str, float]
    at: datetime


class RowFactory:
    """Builds realistic rows; faults decide which of them are wrong, and how."""

    def __init__(self, rng: random.Random, rules: Sequence[RuleSpec]) -> None:
        if not rules:
            raise ValueError("the rule catalogue is empty")
        self.rng = rng
        self.rules = list(rules)
        self._rule_weights = [max(1, r.priority) for r in self.rules]
        self._playbooks: dict[str, list[RuleSpec]] = {}
        self._agent_names = [a for a, _ in AGENT_TYPES]
        self._agent_weights = [w for _, w in AGENT_TYPES]
        self.recent_sessions: list[str] = []

    # -- shared pieces ----------------------------------------------------------------------

    def playbook(self, prompt_type: str) -> list[RuleSpec]:
        """The rules APES' selector prefers for a prompt type, best first (stable: derived
        from the type's name), so that rule combinations recur as they do in production."""
        book = self._playbooks.get(prompt_type)
        if book is None:
            digest = hashlib.sha256(prompt_type.encode()).digest()
            picker = random.Random(int.from_bytes(digest[:8], "big"))
            book = []
            while len(book) < min(PLAYBOOK_SIZE, len(self.rules)):
                rule = picker.choices(self.rules, self._rule_weights)[0]
                if rule not in book:
                    book.append(rule)
            self._playbooks[prompt_type] = book
        return book

    def request(self, prompt: SamplePrompt | None = None) -> Request:
        """A request for `prompt` (default: any sample prompt) and the rules applied."""
        rng = self.rng
        prompt = prompt or rng.choice(SAMPLE_PROMPT_SPECS)
        size = min(len(self.rules), rng.choices((1, 2, 3), (0.35, 0.40, 0.25))[0])
        book = self.playbook(prompt.prompt_type)
        draw = rng.random()
        chosen: list[RuleSpec] = []
        if draw < 0.75:  # the selector's first choices
            chosen = book[:size]
        elif draw < 0.95:  # other rules it rates well for this type
            chosen = rng.sample(book, min(size, len(book)))
        while len(chosen) < size:  # now and then, anything
            rule = rng.choices(self.rules, self._rule_weights)[0]
            if rule not in chosen:
                chosen.append(rule)
        scores = tuple(round(clamp(rng.gauss(r.mean_score, 0.13), 0.0, 1.0), 4) for r in chosen)
        return Request(prompt, tuple(chosen), scores, uuid.uuid4())

    def user_id(self) -> str:
        # A few heavy users, a long tail.
        return f"user_{int(USER_COUNT * self.rng.random() ** 2):04d}"

    def agent_type(self) -> str:
        return self.rng.choices(self._agent_names, self._agent_weights)[0]

    def _hit(self, share: float) -> bool:
        return share > 0 and self.rng.random() < share

    # -- rule_performance -------------------------------------------------------------------

    def rule_performance(
        self, times: Sequence[datetime], effects: Effects
    ) -> tuple[Batch, list[Observation]]:
        """`len(times)` rule applications, grouped into requests of 1-3 rules."""
        batch = Batch("rule_performance")
        observations: list[Observation] = []
        index = 0
        while index < len(times):
            request = self.request()
            rules = request.rules[: len(times) - index]
            at = times[index]
            for rule, score in zip(rules, request.scores, strict=False):
                batch.records.append(
                    self._rule_row(request, rule, score, times[index], effects, batch)
                )
                index += 1
            if len(rules) > 1:
                observations.append(self._observation(request, len(rules), at))
        return batch, observations

    def _rule_row(
        self,
        request: Request,
        rule: RuleSpec,
        score: float,
        at: datetime,
        effects: Effects,
        batch: Batch,
    ) -> Record:
        rng = self.rng
        prompt = request.prompt
        rule_id, rule_name = rule.rule_id, rule.rule_name
        execution_ms = int(
            clamp(rng.lognormvariate(math.log(rule.mean_ms), 0.45), 3, MAX_EXECUTION_MS)
        )
        confidence: float | None = round(clamp(rng.gauss(0.55 + 0.35 * score, 0.08), 0.05, 0.99), 4)
        prompt_type: str | None = prompt.prompt_type
        category: str | None = prompt.category
        broken = ""
        if self._hit(effects.out_of_range):
            broken = rng.choice(("execution_time_ms", "execution_time_ms", "rule_id"))
            if broken == "execution_time_ms":
                execution_ms = rng.choice(
                    (-rng.randint(1, 1000), rng.randint(3_600_000, 90_000_000))
                )
            else:
                rule_id, rule_name = rng.choice(UNKNOWN_RULES)
            batch.out_of_range[f"rule_performance.{broken}"] += 1
        if self._hit(effects.nulls):
            prompt_type = None
            batch.nulls["rule_performance.prompt_type"] += 1
        if self._hit(effects.nulls):
            category = None
            batch.nulls["rule_performance.prompt_category"] += 1
        if self._hit(effects.nulls):
            confidence = None
            batch.nulls["rule_performance.confidence_level"] += 1
        before = {
            "clarity": round(rng.uniform(0.25, 0.7), 3),
            "specificity": round(rng.uniform(0.2, 0.65), 3),
            "completeness": round(rng.uniform(0.3, 0.75), 3),
        }
        after = {
            k: round(v + (1 - v) * score * rng.uniform(0.4, 0.9), 3) for k, v in before.items()
        }
        words = len(prompt.text.split())
        characteristics = {
            "length": len(prompt.text),
            "word_count": words,
            "domain": prompt.domain,
            "complexity": round(clamp(words / 30 + rng.gauss(0, 0.1), 0.05, 1.0), 2),
            "has_code": prompt.category == "technical" and rng.random() < 0.4,
            "language": "en",
        }
        stamp = naive_utc(at)
        return (
            rule_id,
            rule_name,
            request.prompt_id,
            prompt_type,
            category,
            score,
            confidence,
            execution_ms,
            dumps(rule.default_parameters),
            dumps(characteristics),
            dumps(before),
            dumps(after),
            stamp,
            stamp,
        )

    def _observation(self, request: Request, size: int, at: datetime) -> Observation:
        rules = request.rules[:size]
        scores = dict(zip((r.rule_id for r in rules), request.scores, strict=False))
        mean = sum(scores.values()) / len(scores)
        combined = round(clamp(mean + 0.04 * (size - 1) + self.rng.gauss(0, 0.05), 0.0, 1.0), 4)
        return Observation(tuple(sorted(scores)), request.prompt.prompt_type, combined, scores, at)

    # -- user_feedback ----------------------------------------------------------------------

    def user_feedback(self, times: Sequence[datetime], effects: Effects) -> Batch:
        batch = Batch("user_feedback")
        for at in times:
            batch.records.append(self._feedback_row(at, effects, batch))
        return batch

    def _feedback_row(self, at: datetime, effects: Effects, batch: Batch) -> Record:
        rng = self.rng
        request = self.request()
        rating: int | None = int(clamp(round(rng.gauss(2.9 + 2.0 * request.mean_score, 0.9)), 1, 5))
        if rng.random() < 0.08 or self._hit(effects.nulls):
            rating = None
        if rating is None:
            batch.nulls["user_feedback.user_rating"] += 1
        applied: list[dict[str, str]] = request.applied_rules
        if self._hit(effects.out_of_range):
            applied = [{"rule_name": r["rule_name"]} for r in applied]
            batch.out_of_range["user_feedback.applied_rules"] += 1
        session_id: str | None = (
            rng.choice(self.recent_sessions[-200:])
            if self.recent_sessions and rng.random() < 0.7
            else f"sess_{uuid.uuid4().hex}"
        )
        if self._hit(effects.nulls):
            session_id = None
            batch.nulls["user_feedback.session_id"] += 1
        context = {
            "client": rng.choice(CLIENTS),
            "agent_type": self.agent_type(),
            "domain": request.prompt.domain,
            "prompt_type": request.prompt.prompt_type,
        }
        notes = rng.choice(USER_NOTES) if rng.random() < 0.25 else None
        return (
            uuid.uuid4(),
            request.prompt.text,
            request.improved_text,
            rating,
            dumps(applied),
            dumps(context),
            dumps(request.areas),
            notes,
            session_id,
            naive_utc(at),
        )

    # -- prompt_improvement_sessions --------------------------------------------------------

    def prompt_improvement(
        self, times: Sequence[datetime], levels: Sequence[str], effects: Effects
    ) -> Batch:
        """One row per request; `levels` says which cache level answered each one."""
        batch = Batch("prompt_improvement_sessions")
        for at, level in zip(times, levels, strict=True):
            batch.records.append(self._request_row(at, level, effects, batch))
        return batch

    def _request_row(self, at: datetime, level: str, effects: Effects, batch: Batch) -> Record:
        rng = self.rng
        request = self.request()
        median, sigma = RESPONSE_MS[level]
        response_ms = int(clamp(rng.lognormvariate(math.log(median), sigma), 1, MAX_RESPONSE_MS))
        shown_level: str | None = level
        agent: str | None = self.agent_type()
        if self._hit(effects.out_of_range):
            broken = rng.choice(("response_time_ms", "cache_hit_level"))
            if broken == "response_time_ms":
                response_ms = rng.choice((rng.randint(30_000, 600_000), -rng.randint(1, 500), 0))
            else:
                shown_level = "L9"
            batch.out_of_range[f"prompt_improvement_sessions.{broken}"] += 1
        if shown_level != "L9" and self._hit(effects.nulls):
            shown_level = None
            batch.nulls["prompt_improvement_sessions.cache_hit_level"] += 1
        if self._hit(effects.nulls):
            agent = None
            batch.nulls["prompt_improvement_sessions.agent_type"] += 1
        user_hash = hashlib.sha256(self.user_id().encode()).hexdigest()
        stamp = at.astimezone(UTC)
        return (
            request.prompt.text,
            request.improved_text,
            dumps(request.applied_rules),
            response_ms,
            shown_level,
            agent,
            stamp,
            user_hash,
            stamp,
        )

    # -- improvement_sessions ---------------------------------------------------------------

    def session_duration(self) -> timedelta:
        """How long an interactive session lasts (1-20 minutes, most around 4)."""
        return timedelta(seconds=clamp(self.rng.lognormvariate(math.log(240), 0.6), 45, 1200))

    def session_start(
        self, at: datetime, planned: timedelta, effects: Effects, batch: Batch
    ) -> Record:
        """A new session, status 'active'; `planned` is when it should end."""
        session_id = f"sess_{uuid.uuid4().hex}"
        self.recent_sessions.append(session_id)
        del self.recent_sessions[:-500]
        user: str | None = self.user_id()
        if self._hit(effects.nulls):
            user = None
            batch.nulls["improvement_sessions.user_id"] += 1
        metadata = {
            "client": self.rng.choice(CLIENTS),
            "agent_type": self.agent_type(),
            "planned_duration_s": round(planned.total_seconds(), 3),
        }
        return (
            session_id,
            user,
            self.rng.choice(SAMPLE_PROMPT_SPECS).text,
            None,
            dumps([]),
            1,
            None,
            dumps(metadata),
            naive_utc(at),
            None,
            "active",
        )

    def session_outcome(self, original_prompt: str) -> dict[str, Any]:
        """How an active session ends: completed (most) or abandoned, with its results."""
        rng = self.rng
        if rng.random() < 0.22:
            return {
                "status": "abandoned",
                "final_prompt": None,
                "rules_applied": dumps([]),
                "iteration_count": rng.randint(1, 3),
                "total_improvement_score": None,
            }
        spec = next((p for p in SAMPLE_PROMPT_SPECS if p.text == original_prompt), None)
        request = self.request(spec)
        return {
            "status": "completed",
            "final_prompt": improve(original_prompt, request.rules),
            "rules_applied": dumps(request.applied_rules),
            "iteration_count": rng.choices((1, 2, 3, 4, 5, 6), (30, 28, 20, 12, 6, 4))[0],
            "total_improvement_score": round(clamp(request.mean_score + 0.05, 0, 1), 4),
        }

    def finished_session(self, start: datetime, now: datetime) -> Record:
        """A session of the past (backfill): closed already unless it would still be open."""
        planned = self.session_duration()
        batch = Batch("improvement_sessions")
        row = list(self.session_start(start, planned, Effects(), batch))
        if start + planned > now:
            return tuple(row)
        outcome = self.session_outcome(row[2])
        row[3] = outcome["final_prompt"]
        row[4] = outcome["rules_applied"]
        row[5] = outcome["iteration_count"]
        row[6] = outcome["total_improvement_score"]
        row[9] = naive_utc(start + planned) if outcome["status"] == "completed" else None
        row[10] = outcome["status"]
        return tuple(row)

    # -- discovered_patterns ----------------------------------------------------------------

    def discovered_patterns(
        self, times: Sequence[datetime], effects: Effects, *, now: datetime | None = None
    ) -> Batch:
        """New patterns; with `now` (backfill), old ones have been validated or rejected."""
        batch = Batch("discovered_patterns")
        for at in times:
            batch.records.append(self._pattern_row(at, effects, batch, now))
        return batch

    def _pattern_row(
        self, at: datetime, effects: Effects, batch: Batch, now: datetime | None
    ) -> Record:
        rng = self.rng
        first, second = rng.sample(self.rules, 2) if len(self.rules) > 1 else self.rules * 2
        name, template = rng.choice(PATTERN_TEMPLATES)
        prompt = rng.choice(SAMPLE_PROMPT_SPECS)
        effectiveness: float | None = round(rng.uniform(0.5, 0.95), 4)
        support: int | None = int(rng.lognormvariate(math.log(120), 0.8))
        if self._hit(effects.out_of_range):
            effectiveness = round(rng.choice((rng.uniform(1.05, 3.0), -rng.uniform(0.01, 1))), 4)
            batch.out_of_range["discovered_patterns.effectiveness_score"] += 1
        elif self._hit(effects.nulls):
            effectiveness = None
            batch.nulls["discovered_patterns.effectiveness_score"] += 1
        if self._hit(effects.nulls):
            support = None
            batch.nulls["discovered_patterns.support_count"] += 1
        rule = {
            "if": {"prompt_type": prompt.prompt_type, "max_words": rng.choice((20, 40, 80))},
            "then": {"apply": [first.rule_id, second.rule_id], "order": "sequential"},
        }
        base = effectiveness if effectiveness is not None and 0 <= effectiveness <= 1 else 0.7
        interval = {"lower": round(base - 0.06, 4), "upper": round(base + 0.06, 4), "level": 0.95}
        status, validated_at = "pending", None
        if now is not None and now - at > timedelta(hours=6):
            status = rng.choices(("validated", "rejected", "pending"), (0.6, 0.15, 0.25))[0]
            if status != "pending":
                validated_at = naive_utc(at + timedelta(hours=rng.uniform(1, 6)))
        methods, weights = zip(*DISCOVERY_METHODS, strict=True)
        return (
            uuid.uuid4(),
            f"{name}_{first.rule_id.removesuffix('_rule')}"[:100],
            template.format(a=first.rule_name, b=second.rule_name),
            dumps(rule),
            rng.choices(methods, weights)[0],
            effectiveness,
            support,
            dumps(interval),
            status,
            naive_utc(at),
            validated_at,
        )


def improve(text: str, rules: Sequence[RuleSpec]) -> str:
    """The prompt as the rules rewrite it: a role first, the other additions after."""
    role = [r for r in rules if r.rule_id == "role_based_prompting_rule"]
    parts = [r.addition for r in role]
    parts.append(text)
    parts += [r.addition for r in rules if r.addition and r not in role]
    return " ".join(parts)


def uniform_times(rng: random.Random, count: int, start: datetime, end: datetime) -> list[datetime]:
    """`count` sorted moments spread at random over [start, end)."""
    span = (end - start).total_seconds()
    return sorted(start + timedelta(seconds=rng.random() * span) for _ in range(count))
