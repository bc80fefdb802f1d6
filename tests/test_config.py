"""Config loading: every malformed file gets one exact, located message per problem."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from pipectl.config import (
    ConfigError,
    effective_items,
    load_config,
    mask_secret_url,
    parse_config_text,
)
from pipectl.durations import DurationError, format_duration, parse_duration

STEP = """
[[steps]]
name = "rule_effectiveness_summary"
kind = "matview"
relation = "public.rule_effectiveness_summary"
every = "5m"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(textwrap.dedent(text).lstrip("\n"), "bad.toml", environ={})
    return [str(p) for p in caught.value.problems]


MALFORMED: list[tuple[str, str, list[str]]] = [
    (
        "unknown key with suggestion",
        """
        [database]
        connect_timout = "5s"
        """,
        [
            "bad.toml:2: database.connect_timout: unknown key 'connect_timout'; "
            "did you mean 'connect_timeout'?"
        ],
    ),
    (
        "unknown section",
        """
        [databse]
        dsn = "postgresql://x"
        """,
        ["bad.toml:1: databse: unknown key 'databse'; did you mean 'database'?"],
    ),
    (
        "bad duration unit",
        """
        [agent]
        heartbeat = "5 minutez"
        """,
        [
            "bad.toml:2: agent.heartbeat: unknown unit 'minutez' in duration '5 minutez'; "
            "use ms, s, m, h, d or w"
        ],
    ),
    (
        "duration without unit",
        """
        [defaults]
        statement_timeout = 300
        """,
        [
            "bad.toml:2: defaults.statement_timeout: durations need a unit: "
            "write '300s' or '300m', not 300"
        ],
    ),
    (
        "zero duration",
        """
        [agent]
        heartbeat = "0s"
        """,
        ["bad.toml:2: agent.heartbeat: must be longer than zero"],
    ),
    (
        "wrong type: text for integer",
        """
        [agent]
        lost_after = "3"
        """,
        ["bad.toml:2: agent.lost_after: expected a whole number, got text '3'"],
    ),
    (
        "wrong type: number for text",
        """
        [database]
        application_name = 12
        """,
        ["bad.toml:2: database.application_name: expected text, got number 12"],
    ),
    (
        "integer out of range",
        """
        [agent]
        max_parallel_runs = 0
        """,
        ["bad.toml:2: agent.max_parallel_runs: Input should be greater than or equal to 1"],
    ),
    (
        "enum value not allowed",
        """
        [agent]
        log_format = "xml"
        """,
        ["bad.toml:2: agent.log_format: 'xml' is not allowed; expected 'auto', 'json' or 'text'"],
    ),
    (
        "unknown time zone",
        """
        [agent]
        timezone = "Mars/Olympus"
        """,
        [
            "bad.toml:2: agent.timezone: unknown time zone 'Mars/Olympus'; "
            "use an IANA name such as 'UTC'"
        ],
    ),
    (
        "bad metrics address",
        """
        [agent]
        metrics_address = "localhost"
        """,
        ["bad.toml:2: agent.metrics_address: expected HOST:PORT, such as '127.0.0.1:10144'"],
    ),
    (
        "metric min_rows below one",
        """
        [[checks]]
        name = "p95"
        kind = "metric"
        table = "public.prompt_improvement_sessions"
        time_column = "created_at"
        aggregate = "p95"
        column = "response_time_ms"
        min_rows = 0
        """,
        ["bad.toml:8: checks.p95.min_rows: Input should be greater than or equal to 1"],
    ),
    (
        "metric min_rows on a count",
        """
        [[checks]]
        name = "requests"
        kind = "metric"
        table = "public.prompt_improvement_sessions"
        time_column = "created_at"
        aggregate = "count"
        min_rows = 10
        """,
        [
            "bad.toml:1: checks.requests: min_rows does not apply to aggregate 'count' (the"
            " count is the rows: a drop must be judged, not hidden); use bounds.warn_below"
        ],
    ),
    (
        "duplicate step names",
        STEP + STEP,
        [
            "bad.toml:8: steps[1].name: duplicate name 'rule_effectiveness_summary' "
            "(first defined on line 2)"
        ],
    ),
    (
        "dependency cycle",
        """
        [[steps]]
        name = "a"
        kind = "view"
        relation = "public.a"
        depends_on = ["b"]

        [[steps]]
        name = "b"
        kind = "view"
        relation = "public.b"
        depends_on = ["a"]
        """,
        ["bad.toml:5: steps.a.depends_on: dependency cycle: a -> b -> a"],
    ),
    (
        "unknown upstream step, with suggestion",
        STEP
        + """
        [[steps]]
        name = "user_satisfaction_summary"
        kind = "matview"
        relation = "public.user_satisfaction_summary"
        depends_on = ["rule_effectivness_summary"]
        """,
        [
            "bad.toml:11: steps.user_satisfaction_summary.depends_on: unknown step "
            "'rule_effectivness_summary'; did you mean 'rule_effectiveness_summary'?"
        ],
    ),
    (
        "step depending on itself",
        """
        [[steps]]
        name = "a"
        kind = "view"
        relation = "public.a"
        depends_on = ["a"]
        """,
        ["bad.toml:5: steps.a.depends_on: a step cannot depend on itself"],
    ),
    (
        "every and cron both given",
        """
        [[steps]]
        name = "a"
        kind = "matview"
        relation = "public.a"
        every = "5m"
        cron = "*/5 * * * *"
        """,
        ["bad.toml:1: steps.a: give either 'every' or 'cron', not both"],
    ),
    (
        "invalid cron",
        """
        [[steps]]
        name = "a"
        kind = "matview"
        relation = "public.a"
        cron = "61 * * * *"
        """,
        [
            "bad.toml:5: steps.a.cron: invalid cron expression '61 * * * *': "
            "Error validating expression '61': the last value (61) is higher than the maximum "
            "value (59)"
        ],
    ),
    (
        "cron that never fires",
        """
        [[steps]]
        name = "a"
        kind = "matview"
        relation = "public.a"
        cron = "0 3 30 2 *"
        """,
        ["bad.toml:5: steps.a.cron: cron expression '0 3 30 2 *' never fires: no date matches it"],
    ),
    (
        "matview step without relation",
        """
        [[steps]]
        name = "a"
        kind = "matview"
        """,
        ["bad.toml:1: steps.a: a matview step needs 'relation' (the summary it watches)"],
    ),
    (
        "unknown step kind",
        """
        [[steps]]
        name = "a"
        kind = "table"
        relation = "public.a"
        """,
        [
            "bad.toml:3: steps.a.kind: 'table' is not allowed; expected 'matview', 'sql', "
            "'view' or 'incremental'"
        ],
    ),
    (
        "hostile table name",
        """
        [[checks]]
        name = "fresh"
        kind = "freshness"
        table = "public.t; DROP TABLE users; --"
        column = "created_at"
        warn_after = "5m"
        error_after = "1h"
        """,
        [
            "bad.toml:4: checks.fresh.table: unexpected '; DROP TABLE users; --' in "
            "'public.t; DROP TABLE users; --'"
        ],
    ),
    (
        "invalid step name",
        """
        [[steps]]
        name = "refresh everything!"
        kind = "view"
        relation = "public.a"
        """,
        [
            "bad.toml:2: steps.refresh everything!.name: 'refresh everything!' is not a valid "
            "name: start with a letter, then letters, digits, '_', '-' or '.', at most 63 "
            "characters"
        ],
    ),
    (
        "unknown check kind",
        """
        [[checks]]
        name = "c"
        kind = "freshnes"
        """,
        [
            "bad.toml:1: checks.c: unknown check kind 'freshnes'; expected one of freshness, "
            "volume, metric, quality, schema, cache, version, audit"
        ],
    ),
    (
        "missing required key",
        """
        [[checks]]
        name = "c"
        kind = "freshness"
        table = "public.t"
        warn_after = "5m"
        error_after = "1h"
        """,
        ["bad.toml:1: checks.c.column: required key is missing"],
    ),
    (
        "thresholds out of order",
        """
        [[checks]]
        name = "c"
        kind = "freshness"
        table = "public.t"
        column = "created_at"
        warn_after = "1h"
        error_after = "5m"
        """,
        ["bad.toml:1: checks.c: error_after must not be shorter than warn_after"],
    ),
    (
        "check refers to unknown step",
        """
        [[checks]]
        name = "c"
        kind = "freshness"
        table = "public.t"
        column = "created_at"
        warn_after = "5m"
        error_after = "1h"
        step = "nope"
        """,
        ["bad.toml:8: checks.c.step: unknown step 'nope'"],
    ),
    (
        "unknown key inside a check, suggested from its kind",
        """
        [[checks]]
        name = "c"
        kind = "cache"
        source = "redis"
        warn_bellow = 0.9
        """,
        ["bad.toml:5: checks.c.warn_bellow: unknown key 'warn_bellow'; did you mean 'warn_below'?"],
    ),
    (
        "ratio out of range",
        """
        [[checks]]
        name = "c"
        kind = "cache"
        source = "redis"
        warn_below = 1.5
        """,
        ["bad.toml:5: checks.c.warn_below: Input should be less than or equal to 1"],
    ),
    (
        "quality rule missing its parameters",
        """
        [[checks]]
        name = "q"
        kind = "quality"
        table = "public.t"
        rule = { type = "references", column = "rule_id" }
        """,
        ["bad.toml:5: checks.q.rule: rule type 'references' needs ref_table, ref_column"],
    ),
    (
        "invalid TOML",
        """
        [agent
        heartbeat = "5s"
        """,
        ["bad.toml:1: invalid TOML: Expected ']' at the end of a table declaration"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_config_is_reported_exactly(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """
        [agent]
        heartbeat = "5 minutez"
        lost_after = "3"

        [[steps]]
        name = "a"
        kind = "matview"
        relation = "public.a"
        depends_on = ["zz"]
        """
    )
    assert [p.split(":")[1] for p in found] == ["2", "3", "9"]


def test_example_config_is_valid_and_complete(repo_root: Path) -> None:
    loaded = load_config(repo_root / "config.example.toml", environ={})
    config = loaded.config
    assert [s.name for s in config.steps] == [
        "rule_effectiveness_summary",
        "user_satisfaction_summary",
    ]
    kinds = {c.kind for c in config.checks}
    assert kinds == {"freshness", "volume", "metric", "quality", "schema", "cache", "version"}
    assert config.database.dsn is None  # comes from PIPECTL_DATABASE_URL


def test_example_documents_every_option(repo_root: Path) -> None:
    """Each option of the top-level sections appears in the preset with a comment above."""
    text = (repo_root / "config.example.toml").read_text()
    from pipectl.config import (
        AgentConfig,
        CheckDefaults,
        DatabaseConfig,
        RedisConfig,
        RetentionConfig,
        StepDefaults,
    )

    for model in (
        DatabaseConfig,
        RedisConfig,
        AgentConfig,
        RetentionConfig,
        StepDefaults,
        CheckDefaults,
    ):
        for field in model.model_fields:
            assert f"{field} =" in text, f"{model.__name__}.{field} is not documented"


def test_environment_beats_file_and_origin_is_shown() -> None:
    loaded = parse_config_text(
        '[database]\ndsn = "postgresql://file@h/db"\n',
        "pipectl.toml",
        environ={"PIPECTL_DATABASE_URL": "postgresql://env:s3cret@h/db"},
    )
    assert loaded.config.database.dsn == "postgresql://env:s3cret@h/db"
    rows = {key: (value, origin) for key, value, origin in effective_items(loaded)}
    assert rows["database.dsn"] == ("postgresql://env:****@h/db", "env PIPECTL_DATABASE_URL")
    assert rows["agent.heartbeat"] == ("5s", "default")


def test_file_values_show_their_line() -> None:
    loaded = parse_config_text('[agent]\n\nheartbeat = "7s"\n', "p.toml", environ={})
    rows = {key: origin for key, _, origin in effective_items(loaded)}
    assert rows["agent.heartbeat"] == "p.toml:3"


def test_libpq_environment_is_named_as_origin() -> None:
    loaded = parse_config_text("", "p.toml", environ={"PGHOST": "db.example"})
    rows = {key: origin for key, _, origin in effective_items(loaded)}
    assert rows["database.dsn"].startswith("libpq environment")


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        (
            "postgresql://u:pw@h:5432/db?sslmode=require",
            "postgresql://u:****@h:5432/db?sslmode=require",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=h user=u password=pw dbname=d", "host=h user=u password=**** dbname=d"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:****@127.0.0.1:6379/0"),
    ],
)
def test_secrets_are_masked(secret: str, shown: str) -> None:
    assert mask_secret_url(secret) == shown


@pytest.mark.parametrize(
    ("secret", "shown"),
    [
        # URL query parameters, any case, anywhere in the query
        ("postgresql://u@h/db?password=S3cret-1&sslmode=require",
         "postgresql://u@h/db?password=****&sslmode=require"),
        ("postgresql://u@h/db?sslmode=require&PassWord=S3cret-1#f",
         "postgresql://u@h/db?sslmode=require&PassWord=****#f"),
        ("postgresql://u@h/db?sslkey=/k.pem&sslpassword=S3cret-1",
         "postgresql://u@h/db?sslkey=/k.pem&sslpassword=****"),
        ("postgresql://u:S3cret-1@h/db?password=S3cret-1",
         "postgresql://u:****@h/db?password=****"),
        ("postgresql://u:p%40S3cret-1@h1:5432,h2:5433/db",
         "postgresql://u:****@h1:5432,h2:5433/db"),
        # unencoded '/', '?', '#' or '@' in the password
        ("postgresql://u:S3cret-1/x@h:5432/db", "postgresql://u:****@h:5432/db"),
        ("postgresql://u:S3cret-1?x@h/db", "postgresql://u:****@h/db"),
        ("postgresql://u:S3cret-1#x@h/db", "postgresql://u:****@h/db"),
        ("postgresql://u:S3c@ret-1@h/db", "postgresql://u:****@h/db"),
        ("postgresql://u:S3cret-1@[::1/db", "postgresql://u:****@[::1/db"),
        # libpq key=value strings: bare, quoted with escapes, spaces around '=', sslpassword
        ("host=h password=S3cret-1", "host=h password=****"),
        ("host=h password='S3cret-1 and \\' more' user=u", "host=h password=**** user=u"),
        ("host=h password = S3cret-1 user=u", "host=h password = **** user=u"),
        ("host=h password=S3cret\\ -1 user=u", "host=h password=**** user=u"),
        ("host=h sslpassword=S3cret-1 sslkey=/k", "host=h sslpassword=**** sslkey=/k"),
        ("host=h password='S3cret-1 never closed", "host=h password=****"),
        # Redis URLs
        ("redis://u:S3cret-1@h:6379/0", "redis://u:****@h:6379/0"),
        ("rediss://:S3cret-1@h", "rediss://:****@h"),
        ("redis://h:6379/0?password=S3cret-1", "redis://h:6379/0?password=****"),
        ("unix://:S3cret-1@/run/redis.sock?db=0", "unix://:****@/run/redis.sock?db=0"),
        ("unix:///run/redis.sock?db=0&password=S3cret-1", "unix:///run/redis.sock?db=0&password=****"),
        # nothing secret: unchanged
        ("postgresql://u@h/db?application_name=x", "postgresql://u@h/db?application_name=x"),
        ("host=/run/postgresql dbname=apes", "host=/run/postgresql dbname=apes"),
    ],
)  # fmt: skip
def test_every_credential_form_is_masked(secret: str, shown: str) -> None:
    assert mask_secret_url(secret) == shown
    assert "S3cret" not in mask_secret_url(secret)


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "pipectl.toml").write_text('[agent]\nheartbeat = "1s"\n')
    env_file = tmp_path / "env.toml"
    env_file.write_text('[agent]\nheartbeat = "2s"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[agent]\nheartbeat = "3s"\n')

    assert load_config(environ={}).config.agent.heartbeat == timedelta(seconds=1)
    env = {"PIPECTL_CONFIG": str(env_file)}
    assert load_config(environ=env).config.agent.heartbeat == timedelta(seconds=2)
    assert load_config(explicit, environ=env).config.agent.heartbeat == timedelta(seconds=3)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_no_file_found_when_required(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no config file found"):
        load_config(environ={}, require_file=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("2 hours", 7200),
        ("500ms", 0.5),
        ("1d 12h", 129600),
        ("1w", 604800),
        ("1.5m", 90),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "five minutes", "5 minutez", "m5", "5m x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_duration_round_trip() -> None:
    for text in ("1m30s", "500ms", "2d", "1h", "0s"):
        assert format_duration(parse_duration(text)) == text
