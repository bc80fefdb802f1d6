"""Typed messages: the only way data and database events reach the UI.

Workers and the connection supervisor post these; handlers on the App and the screens own every
state change that follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from textual.message import Message

from pipectl.console.data import RequestIntent
from pipectl.model import Request
from pipectl.store.console import RequestRow, RerunPlan

T = TypeVar("T")

LinkState = Literal["connecting", "connected", "lost", "schema"]


@dataclass(frozen=True)
class Connection:
    """What the header shows about the database link."""

    state: LinkState = "connecting"
    target: str = ""
    detail: str = ""
    retry_in: float | None = None
    user: str = ""
    can_write: bool = False

    @property
    def connected(self) -> bool:
        return self.state == "connected"


class ConnectionChanged(Message):
    """The supervisor connected, lost the link, or found the schema unusable."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self.connection = connection


class DatabaseChanged(Message):
    """A NOTIFY arrived: `table` changed; `payload` is what the trigger sent."""

    def __init__(self, table: str, payload: dict[str, Any]) -> None:
        super().__init__()
        self.table = table
        self.payload = payload


class Loaded(Message, Generic[T]):
    """A screen's fetch finished; `snapshot` is immutable and replaces the shown one."""

    def __init__(self, snapshot: T) -> None:
        super().__init__()
        self.snapshot = snapshot


class LoadFailed(Message):
    """A screen's fetch failed (connection lost, or an unexpected database error)."""

    def __init__(self, error: str, disconnected: bool) -> None:
        super().__init__()
        self.error = error
        self.disconnected = disconnected


class RequestFiled(Message):
    """A request row was inserted; the agents were woken by its trigger."""

    def __init__(self, intent: RequestIntent, request: Request) -> None:
        super().__init__()
        self.intent = intent
        self.request = request


class RequestRefused(Message):
    """PostgreSQL refused the request (no privilege) or the link was down."""

    def __init__(self, intent: RequestIntent, error: str) -> None:
        super().__init__()
        self.intent = intent
        self.error = error


class RequestProgress(Message):
    """The current state of a request this console filed (claimed, finished)."""

    def __init__(self, row: RequestRow) -> None:
        super().__init__()
        self.row = row


class PlanReady(Message):
    """What a rerun would run, ready for the confirmation dialog (None: step unknown)."""

    def __init__(self, step: str, plan: RerunPlan | None) -> None:
        super().__init__()
        self.step = step
        self.plan = plan


class ActionFailed(Message):
    """An action could not even be prepared (link down, database error)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
