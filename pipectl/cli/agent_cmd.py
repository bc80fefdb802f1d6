"""`pipectl agent`: the daemon (placeholder until the agent engine lands)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    del subparsers
