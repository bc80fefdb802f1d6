"""Typed request arguments (pipectl.request_args): what a row may hold, and the reason given
for what it may not. The end-to-end side (rows inserted by SQL, rejected by a real agent,
shown by the console and the CLI) is in tests/reliability/test_request_args.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pipectl.db import UNREADABLE_JSON, decode_json
from pipectl.model import RequestKind
from pipectl.request_args import (
    ARGS_OF,
    MAX_SILENCE,
    ArgsError,
    CheckArgs,
    RerunArgs,
    SilenceArgs,
    check_args,
    describe_args,
    parse_args,
)


def test_every_kind_has_a_model() -> None:
    assert set(ARGS_OF) == set(RequestKind)


def test_valid_arguments_round_trip() -> None:
    rerun = RerunArgs(downstream=True)
    assert parse_args(RequestKind.RERUN, rerun.to_json()) == rerun
    assert parse_args(RequestKind.RERUN, {}) == RerunArgs(downstream=False)
    silence = parse_args(RequestKind.SILENCE, {"seconds": 7200})
    assert isinstance(silence, SilenceArgs) and silence.span == timedelta(hours=2)
    assert parse_args(RequestKind.SILENCE, {"seconds": MAX_SILENCE.total_seconds()})
    assert parse_args(RequestKind.PAUSE, {}).to_json() == {}


@pytest.mark.parametrize(
    ("kind", "raw", "reason"),
    [
        (RequestKind.RERUN, [1, 2], "request arguments must be a JSON object"),
        (RequestKind.RERUN, "just text", "request arguments must be a JSON object"),
        (RequestKind.RERUN, None, "request arguments must be a JSON object"),
        (RequestKind.SILENCE, UNREADABLE_JSON, "request arguments must be a JSON object"),
        (RequestKind.RERUN, {"downstream": "yes"}, "'downstream' must be true or false"),
        (RequestKind.RERUN, {"downstream": 1}, "'downstream' must be true or false"),
        (RequestKind.SILENCE, {}, "a silence request needs 'seconds'"),
        (RequestKind.SILENCE, {"seconds": "3600"}, "silence needs 'seconds' > 0"),
        (RequestKind.SILENCE, {"seconds": True}, "silence needs 'seconds' > 0"),
        (RequestKind.SILENCE, {"seconds": -5}, "silence needs 'seconds' > 0"),
        (RequestKind.SILENCE, {"seconds": 0}, "silence needs 'seconds' > 0"),
        (RequestKind.SILENCE, {"seconds": 1e300}, "silences are limited to 30 days"),
        (RequestKind.SILENCE, {"seconds": float("inf")}, "silences are limited to 30 days"),
        (RequestKind.SILENCE, {"seconds": 10**3999}, "silences are limited to 30 days"),
        (
            RequestKind.RERUN,
            {"downstream": True, "steps": ["x"]},
            "unknown argument 'steps' for a rerun request (allowed: downstream)",
        ),
        (
            RequestKind.PAUSE,
            {"until": "tomorrow"},
            "unknown argument 'until' for a pause request (allowed: none)",
        ),
        (
            RequestKind.UNSILENCE,
            {"seconds": 5},
            "unknown argument 'seconds' for an unsilence request (allowed: none)",
        ),
    ],
)
def test_malformed_arguments_are_refused_with_a_reason(
    kind: RequestKind, raw: object, reason: str
) -> None:
    with pytest.raises(ArgsError) as caught:
        parse_args(kind, raw)
    assert str(caught.value) == reason
    assert describe_args(kind, raw) == "bad args"


def test_rows_as_decoded_from_the_database_never_raise_anything_else() -> None:
    """What an attacker with INSERT can store, through the codec the pools use."""
    for text in ["[" * 3000 + "]" * 3000, '{"seconds": 1e5000}', "1" * 5000, '{"a": {"b": []}}']:
        raw = decode_json(text)
        for kind in RequestKind:
            with pytest.raises(ArgsError):
                parse_args(kind, raw)


def test_a_hostile_key_is_quoted_short_and_escaped() -> None:
    key = "\x1b[31m[bold]" + "k" * 500
    with pytest.raises(ArgsError) as caught:
        parse_args(RequestKind.CHECK, {key: 1})
    message = str(caught.value)
    assert "\x1b" not in message and "\\x1b" in message
    assert len(message) < 150


def test_describe_for_tables() -> None:
    assert describe_args(RequestKind.RERUN, {"downstream": True}) == "+down"
    assert describe_args(RequestKind.RERUN, {}) == ""
    assert describe_args(RequestKind.SILENCE, {"seconds": 7200}) == "2h"
    assert describe_args(RequestKind.CHECK, {}) == ""


def test_a_new_request_takes_its_kinds_model() -> None:
    assert check_args(RequestKind.RERUN, None) == RerunArgs()
    assert check_args(RequestKind.CHECK, None) == CheckArgs()
    with pytest.raises(ArgsError, match="a pause request takes PauseArgs, not RerunArgs"):
        check_args(RequestKind.PAUSE, RerunArgs())
    with pytest.raises(ValueError, match="silences are limited to 30 days"):
        SilenceArgs(seconds=90 * 86400)  # the model itself refuses what the agent would
    assert json.dumps(SilenceArgs(seconds=60).to_json()) == '{"seconds": 60.0}'
