"""One hostile corpus, written into every text field the console and the CLI show, as another
database user could (anyone who may write a row: an agent role, a schema owner, a careless
script). Used by tests/reliability/test_hostile_text.py (CLI verbs, text logs) and
tests/console/test_hostile_text.py (every screen).

Each entry has a `needle`: what must be visible wherever the entry is shown, written out by
hand (not computed with pipectl.safetext) and short enough to fit the narrowest column that
shows such a field (40 characters, a request's reason).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Hostile:
    key: str
    raw: str
    needle: str


HUGE = "H" * (1 << 20)  # 1 MiB of one reason, error, name...

CORPUS = (
    # Rich markup: a closing tag with nothing open raised MarkupError; tags vanished; a click
    # action became a link that runs an app action; a link to a local file.
    Hostile(
        "closing_tag",
        "disk almost full, see [/var/log/postgresql] and INC-42",
        "see [/var/log/postg",
    ),
    Hostile("bare_close", "[/] stray closing tag", "[/] stray"),
    Hostile("bold", "[bold]not bold[/bold]", "[bold]not bold"),
    Hostile(
        "click",
        "[@click=app.screenshot('x.svg','/tmp')]runbook[/]",
        "[@click=app.screenshot(",
    ),
    Hostile("link", "[link=file:///etc/passwd]passwd[/link]", "[link=file:///etc/"),
    Hostile("ticket", "[ops/1234] ticket", "[ops/1234] ticket"),
    Hostile("emoji_code", ":warning: :skull: codes", ":warning: :skull:"),
    # Terminal control: set the window title, clear the screen, write the clipboard (OSC 52),
    # a C1 CSI, bell, backspace, delete, carriage return.
    Hostile("osc_title", "\x1b]0;pwned title\x07after", "\\x1b]0;pwned title\\x07"),
    Hostile("csi_clear", "\x1b[2J\x1b[Hcleared", "\\x1b[2J\\x1b[H"),
    Hostile("osc52", "\x1b]52;c;ZXZpbA==\x07clip", "\\x1b]52;c;ZXZpbA=="),
    Hostile("c1", "c1 \x9b31m csi \x85 nel", "c1 \\x9b31m csi \\x85"),
    Hostile("bell", "bell\x07\x08back\x7fdel", "bell\\x07\\x08back\\x7fdel"),
    Hostile("carriage_return", "progress 10%\roverwritten", "progress 10%\\roverwr"),
    # A newline forges a line (of a log, of a table); only what precedes it is sure to show.
    Hostile("newline", "first line\n12:00:00 INFO    forged", "first line"),
    # Bidi overrides and isolates reorder what follows; zero-width characters hide text.
    Hostile("bidi", "user \u202egnp.exe\u202c ok", "user \\u202egnp.exe"),
    Hostile("zero_width", "ad\u200bmin\u2066hid\u2069", "ad\\u200bmin\\u2066"),
    # Wide characters and emoji are text, shown as they are.
    Hostile("wide", "🚀 漢字 emoji 👨\u200d👩\u200d👧 ok", "🚀 漢字 emoji"),
    Hostile("huge", HUGE, "HHHHHHHHHHHHHHHH…"),
)

BY_KEY = {h.key: h for h in CORPUS}

# An outcome detail mixing markup, escape sequences and a newline (toasts, `rerun --wait`).
OUTCOME = " ".join(BY_KEY[k].raw for k in ("osc_title", "bare_close", "bidi", "newline"))
OUTCOME_NEEDLES = ("\\x1b]0;pwned title\\x07", "[/] stray", "user \\u202egnp.exe", "first line")

# What must never reach a terminal: every C0 control but the newline (and tab), DEL, C1, the
# invisible format characters the corpus uses, and zero-width joiners outside a sequence of
# non-ASCII characters (inside one they join emoji: 👨\u200d👩).
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
    "|(?<![^\x00-\x7f])[\u200c\u200d]|[\u200c\u200d](?![^\x00-\x7f])"
)
# Our own styling on a colour terminal: SGR sequences only.
SGR = re.compile(r"\x1b\[[0-9;]*m")

# A name that a config would refuse but a row can hold: shown, never obeyed.
HOSTILE_NAME = "name[/]\x1b]0;t\x07\u202e"
HOSTILE_NAME_NEEDLE = "name[/]\\x1b]0;t\\x07\\u202e"


def raw_controls(output: str, *, joiners: bool = True) -> list[str]:
    """The raw control characters in `output` (our SGR styling aside). `joiners=False` leaves
    zero-width joiners out: an SVG screenshot splits an emoji sequence into elements."""
    found = RAW_CONTROL.findall(SGR.sub("", output))
    return found if joiners else [c for c in found if c not in "\u200c\u200d"]


def forged_lines(output: str) -> list[str]:
    """Lines that start with the newline entry's second line: a forged line."""
    return [line for line in output.splitlines() if line.lstrip().startswith("12:00:00 INFO")]


def fit(text: str, size: int) -> str:
    """The corpus entry within a column's CHECK limit (requests: target 200, reason 2000)."""
    return text[:size]


def step_names() -> list[str]:
    """Per entry a paused step (`p_<key>`: reason, and a failed run) and a failing one
    (`f_<key>`), and the one with a hostile name."""
    return [f"{p}_{h.key}" for h in CORPUS for p in ("p", "f")] + [HOSTILE_NAME]


def check_names() -> list[str]:
    return [f"c_{h.key}" for h in CORPUS] + [HOSTILE_NAME]


async def seed_hostile(conn: asyncpg.Connection, now: datetime) -> dict[str, Any]:
    """Every text field of every table the console and CLI read, once per corpus entry.
    Written with triggers off (as the console seed does) so authors and times are exactly
    the hostile ones; sample rows go in with triggers on (their hourly rollup follows)."""
    await conn.execute("SET session_replication_role = replica")
    try:
        agents = await _seed_rows(conn, now)
    finally:
        await conn.execute("SET session_replication_role = DEFAULT")
    await _seed_samples(conn, now)
    return {"agents": agents}


async def _seed_rows(conn: asyncpg.Connection, now: datetime) -> dict[str, uuid.UUID]:
    agents = {h.key: uuid.uuid4() for h in CORPUS}
    for h in CORPUS:
        await conn.execute(
            "INSERT INTO pipectl.agents (id, name, host, pid, version, started_at, last_seen,"
            " heartbeat_seconds, status_line) VALUES ($1, $2, $2, 4242, $2, $3, now(), 3600, $2)",
            agents[h.key],
            h.raw,
            now - timedelta(hours=3),
        )
    for index, h in enumerate(CORPUS):
        for prefix in ("p", "f"):
            name = f"{prefix}_{h.key}"
            await conn.execute(
                "INSERT INTO pipectl.steps (name, kind, relation, sql, schedule, depends_on,"
                " description, next_run_at, paused, paused_by, paused_at, paused_reason)"
                " VALUES ($1, 'sql', $2, $2, $2, $3, $2, $4, $5, $6, $7, $6)",
                name,
                h.raw,
                [h.raw],
                now + timedelta(minutes=5),
                prefix == "p",
                h.raw if prefix == "p" else None,
                now - timedelta(minutes=30) if prefix == "p" else None,
            )
            await _seed_run(conn, name, h.raw, agents[h.key], now - timedelta(minutes=20 + index))
    await conn.execute(
        "INSERT INTO pipectl.steps (name, kind, sql, description) VALUES ($1, 'sql', $1, $1)",
        HOSTILE_NAME,
    )
    await _seed_run(conn, HOSTILE_NAME, HOSTILE_NAME, agents["osc_title"], now)
    for index, h in enumerate(CORPUS):
        await _seed_check(conn, f"c_{h.key}", h.raw, agents[h.key], now - timedelta(minutes=index))
    await _seed_check(conn, HOSTILE_NAME, HOSTILE_NAME, agents["osc_title"], now, silenced=False)
    await _seed_cache_check(conn, agents["osc_title"], now)
    for index, h in enumerate(CORPUS):
        at = now - timedelta(minutes=10 + index)
        # events.subject is indexed (btree entries are at most ~2.7 kB): 2,000 characters.
        await conn.execute(
            "INSERT INTO pipectl.events (at, kind, subject, actor, message, detail)"
            " VALUES ($1, $2, $3, $4, $4, $5)",
            at,
            h.raw,
            fit(h.raw, 2000),
            h.raw,
            json.dumps({"to": h.raw}),
        )
        await conn.execute(
            "INSERT INTO pipectl.requests (kind, target, args, reason, requested_by, created_at,"
            " claimed_by, claimed_at, done_at, outcome, detail)"
            " VALUES ('rerun', $1, $2, $3, $4, $5, $6, $5, $5, 'failed', $4)",
            fit(h.raw, 200),
            json.dumps({"downstream": False, "note": h.raw}),
            fit(h.raw, 2000),
            h.raw,
            at,
            agents[h.key],
        )
    return agents


async def _seed_run(
    conn: asyncpg.Connection, step: str, text: str, agent: uuid.UUID, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO pipectl.runs (step, trigger, status, requested_by, agent_id, queued_at,"
        " started_at, finished_at, error) VALUES ($1, 'manual', 'failed', $2, $3, $4, $4, $5, $2)",
        step,
        text,
        agent,
        at,
        at + timedelta(seconds=2),
    )


async def _seed_check(
    conn: asyncpg.Connection,
    name: str,
    text: str,
    agent: uuid.UUID,
    at: datetime,
    silenced: bool = True,
) -> None:
    await conn.execute(
        "INSERT INTO pipectl.checks (name, kind, target, sql, schedule, description, status,"
        " status_since, last_value, last_result_at, silenced_until, silenced_by, silence_reason)"
        " VALUES ($1, $2, $2, $2, $2, $2, 'fail', $3, 1, $3, $4, $2, $2)",
        name,
        text,
        at,
        at + timedelta(days=1) if silenced else None,
    )
    await conn.execute(
        "INSERT INTO pipectl.check_results (check_name, status, value, message, threshold,"
        " baseline, observed_at, agent_id) VALUES ($1, 'fail', 1, $2, $3, $3, $4, $5)",
        name,
        text,
        json.dumps({"note": text}),
        at,
        agent,
    )


CACHE_CHECK = "c.cache.levels"  # a valid config name, not a valid widget id


async def _seed_cache_check(conn: asyncpg.Connection, agent: uuid.UUID, now: datetime) -> None:
    """A cache check whose source and level names (keys of a result's JSON) are the corpus."""
    await conn.execute(
        "INSERT INTO pipectl.checks (name, kind, target, status, last_value, last_result_at,"
        " definition) VALUES ($1, 'cache', 'redis', 'ok', 0.9, $2, $3)",
        CACHE_CHECK,
        now,
        json.dumps({"source": BY_KEY["osc_title"].raw}),
    )
    levels = {fit(h.raw, 200): {"hits": 9, "lookups": 10} for h in CORPUS}
    for minute in range(30, 0, -1):
        await conn.execute(
            "INSERT INTO pipectl.check_results (check_name, status, value, expected_low,"
            " message, baseline, observed_at, agent_id) VALUES ($1, 'ok', 0.9, 0.8, $2, $3,"
            " $4, $5)",
            CACHE_CHECK,
            BY_KEY["csi_clear"].raw,
            json.dumps({"source": BY_KEY["osc_title"].raw, "levels": levels}),
            now - timedelta(minutes=minute),
            agent,
        )


async def _seed_samples(conn: asyncpg.Connection, now: datetime) -> None:
    """The cache check's series and its per-level series (`check:level`; series are part of
    the samples' primary key: level names of 200 characters)."""
    rows = []
    for minute in range(30, 0, -1):
        at = now - timedelta(minutes=minute)
        rows.append((CACHE_CHECK, at, 0.9))
        rows += [(f"{CACHE_CHECK}:{fit(h.raw, 200)}", at, 0.9) for h in CORPUS]
    await conn.executemany(
        "INSERT INTO pipectl.samples (series, ts, value) VALUES ($1, $2, $3)", rows
    )
