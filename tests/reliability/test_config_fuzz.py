"""The config loader under random input: a ConfigError naming file, line or key, never a
traceback. Three sources: arbitrary text, TOML-ish text assembled from the real keys, and
structured documents (random tables of real and made-up keys) written out as TOML."""

from __future__ import annotations

import json
import math
import os
import string
import typing
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipectl.config import CHECK_KINDS, Config, ConfigError, LoadedConfig, parse_config_text

FILE = "fuzz.toml"
FUZZ = settings(
    max_examples=int(os.environ.get("PIPECTL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _models(annotation: Any, seen: set[type[BaseModel]]) -> None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return
        seen.add(annotation)
        for field in annotation.model_fields.values():
            _models(field.annotation, seen)
    for arg in typing.get_args(annotation):
        _models(arg, seen)


def _known_keys() -> list[str]:
    seen: set[type[BaseModel]] = set()
    _models(Config, seen)
    for kind in CHECK_KINDS:  # `checks` holds the registered kinds' models
        _models(CHECK_KINDS.model(kind), seen)
    return sorted({name for model in seen for name in model.model_fields})


KEYS = _known_keys()
SECTIONS = ["database", "redis", "agent", "retention", "defaults", "check_defaults"]
ARRAYS = ["steps", "checks", "checks.where", "steps.x", "checks.rule"]
WORDS = [
    *CHECK_KINDS,
    "matview",
    "sql",
    "view",
    "5m",
    "1s",
    "0s",
    "-1m",
    "UTC",
    "redis",
    "public.rule_performance",
    'x"; DROP TABLE canary; --',
    "created_at",
    "*/5 * * * *",
    "a" * 70,
    "ünïcødé",
    "postgresql://u:pw@h/db",
    "",
    " ",
]


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)  # JSON escapes are valid TOML basic strings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def _key(key: str) -> str:
    bare = key and all(c in string.ascii_letters + string.digits + "_-" for c in key)
    return key if bare else _toml_string(key)


def render(document: dict[str, Any]) -> str:
    """A document as TOML: scalars first, then tables and arrays of tables."""
    head: list[str] = []
    tail: list[str] = []
    for key, value in document.items():
        if isinstance(value, dict):
            tail.append(f"[{_key(key)}]")
            tail += [f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tail.append(f"[[{_key(key)}]]")
                tail += [f"{_key(k)} = {_toml_value(v)}" for k, v in item.items()]
        else:
            head.append(f"{_key(key)} = {_toml_value(value)}")
    return "\n".join(head + tail) + "\n"


keys = st.one_of(st.sampled_from(KEYS + SECTIONS + ["steps", "checks"]), st.text(max_size=12))
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=30),
    st.datetimes(timezones=st.just(UTC)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=20,
)
tables = st.dictionaries(keys, values, max_size=8)
documents = st.fixed_dictionaries(
    {},
    optional={
        **{section: tables for section in SECTIONS},
        "steps": st.lists(tables, max_size=4),
        "checks": st.lists(
            st.builds(
                lambda kind, rest: {"kind": kind, **rest},
                st.one_of(st.sampled_from(CHECK_KINDS.names()), st.text(max_size=5)),
                tables,
            ),
            max_size=4,
        ),
    },
)
environments = st.sampled_from(
    [{}, {"PGHOST": "db"}, {"PIPECTL_DATABASE_URL": "postgresql://a:b@c/d"}]
)


def toml_line() -> st.SearchStrategy[str]:
    header = st.builds(lambda s: f"[{s}]", st.sampled_from([*SECTIONS, "agent.x", "x y"]))
    array = st.builds(lambda s: f"[[{s}]]", st.sampled_from(ARRAYS))
    assignment = st.builds(
        lambda k, v: f"{k} = {v}",
        st.sampled_from(KEYS),
        st.one_of(scalars.map(_toml_value), st.text(max_size=20)),
    )
    junk = st.text(alphabet=st.sampled_from(list("[]{}=\"'#.,\\ \tabc1\n")), max_size=20)
    return st.one_of(header, array, assignment, assignment, junk)


def assert_loads_or_locates(text: str, env: dict[str, str] | None = None) -> None:
    try:
        loaded = parse_config_text(text, FILE, environ=env or {})
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert isinstance(loaded, LoadedConfig)
        return
    assert problems, "a ConfigError must list at least one problem"
    for problem in problems:
        assert problem.file == FILE
        assert problem.line is not None or problem.path, f"no location: {problem}"
        assert str(problem).startswith(FILE)
        assert problem.message.strip()


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    assert_loads_or_locates(text)


@FUZZ
@given(st.lists(toml_line(), max_size=25))
def test_toml_like_text(lines: list[str]) -> None:
    assert_loads_or_locates("\n".join(lines))


@FUZZ
@given(documents, environments)
def test_structured_documents(document: dict[str, Any], env: dict[str, str]) -> None:
    assert_loads_or_locates(render(document), env)


def test_pathological_inputs_found_by_fuzzing() -> None:
    """Each of these raised TypeError, ValueError or RecursionError before."""
    for text, env in [
        ("steps = 5", {}),
        ("checks = 5", {}),
        ("database = 5", {"PGHOST": "db"}),
        ("[agent]\nlost_after = " + "1" * 5000, {}),
        ("a = " + "[" * 5000 + "]" * 5000, {}),
    ]:
        assert_loads_or_locates(text, env)
