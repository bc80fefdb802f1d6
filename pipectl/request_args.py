"""The arguments of each request kind, typed: what the console and the CLI write into
`pipectl.requests.args` and what the agent reads back.

A request row is written by anyone with INSERT on the table, so what is read back is
arbitrary JSON (an array, a string, a number of thousands of digits). `parse_args` turns it
into the kind's model or raises `ArgsError` with a message fit for the request's outcome
detail; `describe_args` gives the short form the console and the CLI show next to the kind,
whatever the row holds. Creating a request takes a model, so what pipectl itself files is
valid by construction (and `check_args` refuses a model of the wrong kind).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from datetime import timedelta
from typing import Any, ClassVar, Self

from pipectl.format import seconds as format_seconds
from pipectl.model import MAX_SILENCE as MAX_SILENCE
from pipectl.model import RequestKind

# How much of an unknown key a message quotes: the key is the writer's text, not ours.
_KEY_LIMIT = 40

# Plain frozen dataclasses, not pydantic models: every verb that files a request (`pipectl
# rerun`, ...) and the console import this module, and five fields do not need pydantic's
# import time (docs/DEVELOPING.md, "A CLI that starts at once").


class ArgsError(ValueError):
    """A request's arguments do not fit its kind; the message says why."""


@dataclass(frozen=True, kw_only=True)
class RequestArgs:
    """Arguments of one request kind: exactly these keys, of exactly these types. Each field
    is checked (and may be normalised) by its entry in CHECKS, whether the arguments are
    built by pipectl or read from a row; a field without a default is required."""

    KIND_TEXT: ClassVar[str] = "this"
    CHECKS: ClassVar[dict[str, Callable[[object], object]]] = {}

    def __post_init__(self) -> None:
        for name in self.names():
            check = self.CHECKS.get(name)
            if check is not None:
                try:
                    object.__setattr__(self, name, check(getattr(self, name)))
                except ValueError as exc:
                    raise ArgsError(str(exc)) from None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def parse(cls, raw: object) -> Self:
        """The model for `raw` (a request row's args as read), or ArgsError saying why not:
        the first field that is missing or refused, else the first unknown key."""
        if not isinstance(raw, dict):
            raise ArgsError("request arguments must be a JSON object")
        names = cls.names()
        required = {
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        }
        for name in names:
            if name in raw:
                check = cls.CHECKS.get(name)
                if check is not None:
                    try:
                        check(raw[name])
                    except ValueError as exc:
                        raise ArgsError(str(exc)) from None
            elif name in required:
                raise ArgsError(f"{cls.a_request()} needs {_quoted(name)}")
        for key in raw:
            if key not in names:
                allowed = ", ".join(names) or "none"
                raise ArgsError(
                    f"unknown argument {_quoted(key)} for {cls.a_request()} (allowed: {allowed})"
                )
        return cls(**raw)

    @classmethod
    def a_request(cls) -> str:
        """For messages: "a rerun request", "an unsilence request"."""
        article = "an" if cls.KIND_TEXT[0] in "aeiou" else "a"
        return f"{article} {cls.KIND_TEXT} request"

    def to_json(self) -> dict[str, Any]:
        """What goes into pipectl.requests.args."""
        return {name: getattr(self, name) for name in self.names()}

    def describe(self) -> str:
        """A short note shown next to the kind ("" when there is nothing to say)."""
        return ""


def _downstream(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("'downstream' must be true or false")
    return value


@dataclass(frozen=True, kw_only=True)
class RerunArgs(RequestArgs):
    """Rerun a step, and with `downstream` every step depending on it, in order."""

    KIND_TEXT: ClassVar[str] = "rerun"
    CHECKS: ClassVar[dict[str, Callable[[object], object]]] = {"downstream": _downstream}
    downstream: bool = False

    def describe(self) -> str:
        return "+down" if self.downstream else ""


def _span(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("silence needs 'seconds' > 0")
    # Compared before any conversion: an int of thousands of digits, or inf, must not
    # reach float() or timedelta(), which overflow.
    if value > MAX_SILENCE.total_seconds():
        raise ValueError(f"silences are limited to {MAX_SILENCE.days} days")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class SilenceArgs(RequestArgs):
    """Silence a check for `seconds` (more than 0, at most MAX_SILENCE)."""

    KIND_TEXT: ClassVar[str] = "silence"
    CHECKS: ClassVar[dict[str, Callable[[object], object]]] = {"seconds": _span}
    seconds: float

    @property
    def span(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def describe(self) -> str:
        return format_seconds(self.seconds)


@dataclass(frozen=True, kw_only=True)
class CheckArgs(RequestArgs):
    """Run a check now (target: its name, or "*" / "all"): no arguments."""

    KIND_TEXT: ClassVar[str] = "check"


@dataclass(frozen=True, kw_only=True)
class PauseArgs(RequestArgs):
    """Pause a step's scheduled runs: no arguments."""

    KIND_TEXT: ClassVar[str] = "pause"


@dataclass(frozen=True, kw_only=True)
class ResumeArgs(RequestArgs):
    """Undo a pause: no arguments."""

    KIND_TEXT: ClassVar[str] = "resume"


@dataclass(frozen=True, kw_only=True)
class UnsilenceArgs(RequestArgs):
    """End a silence now: no arguments."""

    KIND_TEXT: ClassVar[str] = "unsilence"


def _run_id(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise ValueError("publish needs 'run': the id of the held run")
    return value


@dataclass(frozen=True, kw_only=True)
class PublishArgs(RequestArgs):
    """Publish a held step anyway: `run` is the held run the operator saw (the agent refuses
    when it is no longer the step's latest decisive run, so nothing else gets published)."""

    KIND_TEXT: ClassVar[str] = "publish"
    CHECKS: ClassVar[dict[str, Callable[[object], object]]] = {"run": _run_id}
    run: int

    def describe(self) -> str:
        return f"run {self.run}"


ARGS_OF: dict[RequestKind, type[RequestArgs]] = {
    RequestKind.RERUN: RerunArgs,
    RequestKind.CHECK: CheckArgs,
    RequestKind.PAUSE: PauseArgs,
    RequestKind.RESUME: ResumeArgs,
    RequestKind.SILENCE: SilenceArgs,
    RequestKind.UNSILENCE: UnsilenceArgs,
    RequestKind.PUBLISH: PublishArgs,
}


def parse_args(kind: RequestKind, raw: object) -> RequestArgs:
    """The arguments of a request of `kind` as read from its row; ArgsError when malformed."""
    return ARGS_OF[kind].parse(raw)


def check_args(kind: RequestKind, args: RequestArgs | None) -> RequestArgs:
    """`args` for a new request of `kind` (its defaults when None); ArgsError when the model
    belongs to another kind."""
    model = ARGS_OF[kind]
    if args is None:
        return model()
    if type(args) is not model:
        raise ArgsError(f"{model.a_request()} takes {model.__name__}, not {type(args).__name__}")
    return args


def describe_args(kind: RequestKind, raw: object) -> str:
    """What a row's arguments say, short, for tables: "+down", "2.0h", "" or, for arguments
    the agent rejects, "bad args"."""
    try:
        return parse_args(kind, raw).describe()
    except ArgsError:
        return "bad args"


def _quoted(key: object) -> str:
    text = str(key)
    if len(text) > _KEY_LIMIT:
        text = text[:_KEY_LIMIT] + "…"
    return repr(text)
