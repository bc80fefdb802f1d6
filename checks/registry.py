"""Check kinds by name. Adding a kind: write its module (config model, probe, evaluation and a
`KIND`), then list it in `BUILT_IN`.

Importing this module (importing `pipectl.checks` does) declares each kind to `pipectl.config`,
which cannot import the kinds itself, so that configs naming them parse. A kind's module is
imported when first needed (a config names it, or the engine runs one of its checks): a config
of freshness, volume and quality checks loads neither the audit kind nor the cache kind.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from pipectl.checks.base import KindSpec
from pipectl.config import CHECK_KINDS

BUILT_IN = {
    "freshness": "pipectl.checks.freshness",
    "volume": "pipectl.checks.volume",
    "metric": "pipectl.checks.metric",
    "quality": "pipectl.checks.quality",
    "schema": "pipectl.checks.schema",
    "cache": "pipectl.checks.cache",
    "version": "pipectl.checks.version",
    "audit": "pipectl.checks.audit",
}
"""Each built-in kind's module (exporting `KIND`), in the order configs list them."""


class Kinds(Mapping[str, KindSpec[Any]]):
    """Kind name -> KindSpec, over the kinds `CHECK_KINDS` knows; a built-in kind's module is
    imported on first lookup."""

    def __init__(self) -> None:
        self._specs: dict[str, KindSpec[Any]] = {}

    def __getitem__(self, kind: str) -> KindSpec[Any]:
        if kind not in self._specs and kind in BUILT_IN and kind in CHECK_KINDS.names():
            _load(kind)
        return self._specs[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(CHECK_KINDS.names())

    def __len__(self) -> int:
        return len(CHECK_KINDS.names())


KINDS = Kinds()


def register(spec: KindSpec[Any]) -> None:
    """Make a kind known to the engine and to config parsing."""
    CHECK_KINDS.register(spec.model)
    KINDS._specs[spec.kind] = spec


def unregister(kind: str) -> None:
    """Forget a kind (tests that register one of their own)."""
    CHECK_KINDS.unregister(kind)
    KINDS._specs.pop(kind, None)


def _load(kind: str) -> None:
    register(importlib.import_module(BUILT_IN[kind]).KIND)


def _declare(kind: str) -> None:
    CHECK_KINDS.declare(kind, lambda: _load(kind))


for _kind in BUILT_IN:
    _declare(_kind)
