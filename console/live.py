"""Live updates: NOTIFYs debounced into refetches, and toasts that follow this console's requests.

Both are plain state machines driven by the App's message handlers; neither touches the
database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pipectl.console.data import RequestIntent
from pipectl.model import Outcome, Request
from pipectl.store.console import RequestRow

Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True)
class Change:
    """What a NOTIFY said changed: a table, and the step or check it concerns (if it says)."""

    table: str
    subject: str | None = None

    @classmethod
    def of(cls, table: str, payload: dict[str, object]) -> Change:
        subject = payload.get("step") or payload.get("check") or payload.get("name")
        if table == "requests":
            subject = payload.get("target")
        return cls(table, subject if isinstance(subject, str) else None)


class Refreshable(Protocol):
    def data_changed(self, changes: set[Change]) -> None: ...


class TimerLike(Protocol):
    def stop(self) -> None: ...


class ChangeRouter:
    """Collects changes for `delay` seconds, then tells every screen once.

    A burst of NOTIFYs (a rerun touching ten rows) becomes a single refetch per screen."""

    def __init__(
        self, set_timer: Callable[[float, Callable[[], None]], TimerLike], delay: float = 0.2
    ) -> None:
        self._set_timer = set_timer
        self.delay = delay
        self.screens: list[Refreshable] = []
        self._pending: set[Change] = set()
        self._timer: TimerLike | None = None

    def register(self, screen: Refreshable) -> None:
        if screen not in self.screens:
            self.screens.append(screen)

    def unregister(self, screen: Refreshable) -> None:
        if screen in self.screens:
            self.screens.remove(screen)

    def changed(self, change: Change) -> None:
        self._pending.add(change)
        if self._timer is None:
            self._timer = self._set_timer(self.delay, self.flush)

    def flush(self) -> None:
        changes, self._pending, self._timer = self._pending, set(), None
        for screen in list(self.screens):
            screen.data_changed(changes)

    def everything(self) -> None:
        """After (re)connecting: every screen is stale (an empty set means everything)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._pending = set()
        for screen in list(self.screens):
            screen.data_changed(set())


@dataclass(frozen=True)
class Toast:
    message: str
    title: str
    severity: Severity = "information"
    request_id: int | None = None
    """The request it tells about: its next toast replaces this one."""
    final: bool = False
    """The request's outcome: nothing replaces it."""


SEVERITY: dict[Outcome, Severity] = {
    Outcome.SUCCEEDED: "information",
    Outcome.FAILED: "error",
    Outcome.REJECTED: "warning",
    Outcome.CANCELLED: "warning",
}


class RequestFeedback:
    """Which toasts to show for the requests this console filed: filed, claimed, finished.

    Each state is announced once, whatever order the NOTIFYs and fetches arrive in."""

    def __init__(self) -> None:
        self._mine: dict[int, RequestIntent] = {}
        self._told: dict[int, set[str]] = {}

    def is_mine(self, request_id: int) -> bool:
        return request_id in self._mine

    def filed(self, intent: RequestIntent, request: Request) -> Toast:
        self._mine[request.id] = intent
        self._told[request.id] = {"queued"}
        what = intent.summary or request.target
        return Toast(
            f"{request.kind} {what}" + (f" — {request.reason}" if request.reason else ""),
            f"Request {request.id} filed",
            request_id=request.id,
        )

    def refused(self, intent: RequestIntent, error: str) -> Toast:
        return Toast(error, f"{intent.kind} {intent.target} not filed", "error")

    def progress(self, row: RequestRow) -> list[Toast]:
        request = row.request
        told = self._told.get(request.id)
        if told is None:
            return []
        toasts = []
        if request.claimed_at is not None and "claimed" not in told and request.done_at is None:
            told.add("claimed")
            toasts.append(
                Toast(
                    f"{request.kind} {request.target} is being carried out",
                    f"Request {request.id} claimed by {row.agent or 'an agent'}",
                    request_id=request.id,
                )
            )
        if request.done_at is not None and "done" not in told:
            told.add("done")
            outcome = request.outcome or Outcome.SUCCEEDED
            took = (request.done_at - request.created_at).total_seconds()
            toasts.append(
                Toast(
                    request.detail or f"{request.kind} {request.target}",
                    f"Request {request.id} {outcome} in {took:.1f}s"
                    + (f" by {row.agent}" if row.agent else ""),
                    SEVERITY[outcome],
                    request_id=request.id,
                    final=True,
                )
            )
            self._mine.pop(request.id, None)
            self._told.pop(request.id, None)
        return toasts
