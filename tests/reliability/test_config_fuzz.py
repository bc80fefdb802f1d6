"""The config loader under random input: a ConfigError naming file, line or key, never a
traceback. Three sources: arbitrary text, TOML-ish text assembled from the real keys, and
structured documents (random tables of real and made-up keys) written out as TOML."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import string
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import annotated_types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipectl.cli import main
from pipectl.config import (
    CHECK_KINDS,
    Config,
    ConfigError,
    IncrementalConfig,
    LoadedConfig,
    StepConfig,
    parse_config_text,
)
from pipectl.durations import MAX_DURATION, POSTGRES_TIMEOUT_MAX

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


# ------------------------------------------------------------------ hostile numbers (issue 13 §5)
#
# Every duration and number option of the config model, found by walking the model (so an
# option added later is covered without touching this test), given huge, negative, NaN and
# infinite values, through `pipectl config check`: exit 2 and a message naming the key.


@dataclass(frozen=True)
class Option:
    """One duration or number key, and the TOML that puts a value there."""

    header: str  # the table it lives in, with whatever its kind needs
    path: tuple[str | int, ...]  # from that table; an int is an item of a list of tables
    kind: str  # "duration", "int" or "float"
    metadata: tuple[Any, ...]  # pydantic constraints (Ge, Gt, Le, Lt)

    @property
    def key(self) -> str:
        return str(self.path[-1])

    def toml(self, value: str) -> str:
        first, *rest = self.path
        if rest and isinstance(rest[0], int):  # `where = [{value = X}]`
            return f"{self.header}\n{first} = [{{{'.'.join(map(str, rest[1:]))} = {value}}}]\n"
        return f"{self.header}\n{'.'.join(map(str, self.path))} = {value}\n"

    def bounded(self, kind: type) -> Any:
        return next((m for m in self.metadata if isinstance(m, kind)), None)


def _classify(annotation: Any) -> tuple[str | None, tuple[Any, ...], Any]:
    """(kind, constraints, model or item model) of a field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        kind, meta, model = _classify(args[0])
        extra = tuple(m for a in args[1:] for m in getattr(a, "metadata", [a]))
        return kind, meta + extra, model
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _classify(options[0])
        return ("float" if float in options else None), (), None  # e.g. a filter's value
    if origin is list and args:
        kind, meta, model = _classify(args[0])
        return ("models" if kind == "model" else None), (), model
    if annotation is timedelta:
        return "duration", (), None
    if annotation is bool:
        return None, (), None
    if annotation in (int, float):
        return annotation.__name__, (), None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", (), annotation
    return None, (), None


def _options(model: type[BaseModel], header: str, prefix: tuple[str | int, ...] = ()) -> Any:
    for name, field in model.model_fields.items():
        if name == "kind":
            continue
        kind, meta, nested = _classify(field.annotation)
        meta += tuple(field.metadata)
        if kind == "model":
            yield from _options(nested, header, (*prefix, name))
        elif kind == "models":
            yield from _options(nested, header, (*prefix, name, 0))
        elif kind is not None:
            yield Option(header, (*prefix, name), kind, meta)


def _all_options() -> list[Option]:
    options: list[Option] = []
    for section in SECTIONS:
        options += _options(Config.model_fields[section].annotation, f"[{section}]")
    options += [
        o
        for o in _options(StepConfig, '[[steps]]\nname = "s"\nkind = "sql"\nsql = "SELECT 1"')
        if o.path[0] != "incremental"
    ]
    # An incremental step's own table: window and aggregates left for the options to set.
    options += _options(
        IncrementalConfig,
        '[[steps]]\nname = "s"\nkind = "incremental"\nrelation = "public.s"\n'
        '[steps.incremental]\nsource = "public.t"\ntime_column = "t"\n'
        'keys = [{ name = "k", column = "k" }]',
    )
    for kind in CHECK_KINDS.names():
        check_model = CHECK_KINDS.model(kind)
        assert check_model is not None
        options += _options(check_model, f'[[checks]]\nname = "c"\nkind = "{kind}"')
    return options


OPTIONS = _all_options()
HOSTILE_DURATIONS = [
    '"1000000000d"', '"99999999999999999999999s"', '"-5m"', '"nan"', '"inf"',
    '"' + "9" * 400 + 's"', "nan", "inf", "-inf", "-1", "1e309",
]  # fmt: skip
HUGE_INTEGERS = [str(2**63), str(-(2**63) - 1), "1" + "0" * 30]
NOT_FINITE = ["nan", "inf", "-inf", "+inf", "1e309"]


def _must_refuse(option: Option, value: str) -> bool:
    """Whether the option's documented domain excludes `value` (else it may be accepted)."""
    if option.kind == "duration" or value in NOT_FINITE or value in HUGE_INTEGERS:
        return True
    lower = option.bounded(annotated_types.Ge) or option.bounded(annotated_types.Gt)
    upper = option.bounded(annotated_types.Le) or option.bounded(annotated_types.Lt)
    number = float(value)
    if number < 0 and lower is not None:
        return True
    return number > 2**52 and upper is not None


def _config_check(text: str, folder: Path) -> tuple[int, str]:
    path = folder / "hostile.toml"
    path.write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["--config", str(path), "config", "check"])
    return code, err.getvalue()


def _names(stderr: str, key: str) -> bool:
    """A problem line of `config check` whose key path has `key` as one of its parts."""
    for line in stderr.splitlines():
        parts = line.split(": ")
        if len(parts) >= 3 and key in re.split(r"[.\[\]]", parts[1]):
            return True
    return False


def test_every_duration_and_number_option_is_found() -> None:
    keys = {(o.header.split("\n")[-1] if "kind" in o.header else o.header, o.key) for o in OPTIONS}
    assert len(OPTIONS) > 40, keys
    kinds = {o.key: o.kind for o in OPTIONS}
    for key, kind in [("heartbeat", "duration"), ("lost_after", "int"), ("warn_over", "float"),
                      ("statement_timeout", "duration"), ("min_points", "int"), ("value", "float"),
                      ("window", "duration"), ("warn_below", "float")]:  # fmt: skip
        assert kinds.get(key) == kind, key


def test_hostile_numbers_in_every_option_are_refused_naming_the_key(tmp_path: Path) -> None:
    """Huge, negative, NaN and infinite values for each option: `config check` exits 2 and
    names the key when the value is outside the option's domain, never a traceback."""
    failures: list[str] = []
    for option in OPTIONS:
        values = HOSTILE_DURATIONS if option.kind == "duration" else [
            *NOT_FINITE, *HUGE_INTEGERS, str(2**62), "-1", "-1.5", "-1e300"
        ]  # fmt: skip
        for value in values:
            text = option.toml(value)
            try:
                code, stderr = _config_check(text, tmp_path)
            except Exception as exc:  # a traceback: the bug this test exists for
                failures.append(f"{text!r}: {type(exc).__name__}: {exc}")
                continue
            if _must_refuse(option, value) and not (code == 2 and _names(stderr, option.key)):
                failures.append(f"{text!r}: exit {code}, {stderr.strip()!r}")
    assert not failures, "\n".join(failures[:30]) + f"\n({len(failures)} in all)"


durations = st.one_of(
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.one_of(st.integers(min_value=0), st.floats(min_value=0, allow_infinity=False)),
        st.sampled_from(["ms", "s", "m", "h", "d", "w", " days", "x", ""]),
    ),
    st.text(alphabet="0123456789.-+smhdwinfa ", max_size=30),
)
numbers = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True))


@FUZZ
@given(st.sampled_from(OPTIONS), st.one_of(durations.map(_toml_string), numbers.map(_toml_value)))
def test_random_numbers_anywhere_load_within_bounds_or_are_located(
    option: Option, value: str
) -> None:
    """Whatever a number option or a duration option is given: a located ConfigError, or a
    config whose value is finite and within the documented maximum."""
    text = option.toml(value)
    try:
        loaded = parse_config_text(text, FILE, environ={})
    except ConfigError as exc:
        problems = exc.problems
    else:
        for duration in _walk_values(loaded.config):
            assert timedelta(0) <= duration <= MAX_DURATION, text
        return
    assert all(p.file == FILE and (p.line or p.path) for p in problems), problems


def _walk_values(model: BaseModel) -> Any:
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, BaseModel):
                yield from _walk_values(item)
            elif isinstance(item, timedelta):
                yield item
            elif isinstance(item, float):
                assert math.isfinite(item), (name, item)


# ------------------------------------------------------------------ the CLI's numbers
#
# Every number and duration option of the verbs: argparse refuses what is outside the
# documented domain before anything connects, naming the option (exit 2, no traceback).


@dataclass(frozen=True)
class CliOption:
    argv: tuple[str, ...]  # the verb (and what it needs) before the option
    option: str
    kind: str  # "int", "float" or "duration"
    low: float  # more than this (floats, durations) or at least this (ints)
    high: float  # at most this (durations in seconds)


DAY = 86_400.0
CLI_OPTIONS = [
    CliOption(("history",), "--limit", "int", 1, 10_000),
    *(CliOption((verb, "x"), "--timeout", "float", 0, DAY)
      for verb in ("rerun", "resume", "unsilence")),
    CliOption(("pause", "x", "--reason", "r"), "--timeout", "float", 0, DAY),
    CliOption(("silence", "x", "--for", "1h"), "--timeout", "float", 0, DAY),
    CliOption(("silence", "x"), "--for", "duration", 0, 30 * DAY),
    CliOption(("audit", "x"), "--timeout", "duration", 0, POSTGRES_TIMEOUT_MAX.total_seconds()),
    CliOption(("demo",), "--duration", "float", 0, 30 * DAY),
    CliOption(("demo",), "--backfill-days", "int", 1, 365),
    CliOption(("demo",), "--seed", "int", 0, 2**63 - 1),
    CliOption(("demo",), "--warmup", "int", 0, 3600),
    CliOption(("demo",), "--pace", "int", 1, 100),
    CliOption(("simulate",), "--speed", "float", 0, 1000),
    CliOption(("simulate",), "--backfill", "int", 1, 365),
    CliOption(("simulate",), "--duration", "float", 0, 30 * DAY),
    CliOption(("simulate",), "--seed", "int", 0, 2**63 - 1),
    CliOption(("fault", "inject", "spike"), "--for", "duration", 0, 36_500 * DAY),
    CliOption(("fault", "inject", "spike"), "--factor", "float", -math.inf, math.inf),
]  # fmt: skip
HOSTILE_CLI = [
    "nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "-0", "99999999999999999999999",
    "9" * 5000, "1000000000d", "99999999999999999999999s", "-5m", "nan s", "", " ", "x",
]  # fmt: skip


def _within(option: CliOption, value: Any) -> bool:
    if option.kind == "duration":
        seconds = value.total_seconds()
        return option.low < seconds <= option.high
    if not math.isfinite(value):
        return False
    if option.kind == "int":
        return isinstance(value, int) and option.low <= value <= option.high
    return option.low < value <= option.high or option.low == -math.inf


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def test_hostile_numbers_on_the_command_line_are_refused_naming_the_option() -> None:
    """Each hostile value either is refused by argparse (exit 2, `argument --opt: ...`) or,
    for the few that are valid somewhere ("0" for a seed), parses within the domain."""
    failures = []
    for option in CLI_OPTIONS:
        for value in HOSTILE_CLI:
            argv = [*option.argv, f"{option.option}={value}"]
            parsed = _parse(argv)
            if parsed is not None:
                if not _within(option, parsed):
                    failures.append(f"{argv}: accepted {parsed!r}")
                continue
            code, stderr = _cli(["--config", "/nonexistent.toml", *argv])
            if code != 2 or f"argument {option.option}:" not in stderr or "Traceback" in stderr:
                failures.append(f"{argv}: exit {code}, {stderr.strip()[-200:]!r}")
    assert not failures, "\n".join(failures)


def _parse(argv: list[str]) -> Any:
    """The option's value when argparse accepts it; None when it refuses (exit 2)."""
    from pipectl.cli import build_parser

    code: Any = None
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            code = exc.code
    if code is not None:
        assert code == 2, argv
        return None
    option = argv[-1].split("=", 1)[0].lstrip("-").replace("-", "_")
    if option == "for":
        option = "span" if argv[0] == "silence" else "duration"
    return getattr(args, option)


cli_values = st.one_of(
    st.text(max_size=40),
    numbers.map(str),
    durations,
    st.integers().map(lambda n: f"{n}e{n % 400}"),
)


@FUZZ
@given(st.sampled_from(CLI_OPTIONS), cli_values)
def test_random_values_on_the_command_line_parse_within_bounds_or_are_refused(
    option: CliOption, value: str
) -> None:
    parsed = _parse([*option.argv, f"{option.option}={value}"])
    assert parsed is None or _within(option, parsed), (option.option, value, parsed)
