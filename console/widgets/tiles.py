"""Small bordered tiles (check counts, cache hit ratios, agents) kept in sync with a snapshot."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.containers import Horizontal
from textual.widgets import Static

STATES = ("ok", "warn", "fail", "error", "nodata")

_ID_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def node_id(prefix: str, name: str) -> str:
    """A widget id for something named in the database: `prefix-name` when the name is made
    of the characters ids allow, else a readable stem and a digest (a check named `a.b`, or
    anything else a row may hold, must neither crash the mount nor clash with another)."""
    if _ID_SAFE.fullmatch(name):
        return f"{prefix}-{name}"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name[:40])
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{prefix}-{stem}-{digest}"


@dataclass(frozen=True)
class TileData:
    """A tile's title and body are Text: a title that names a check is never read as markup."""

    key: str
    title: Text
    body: Text
    state: str = "nodata"


class Tile(Static):
    """One tile; its border colour follows its state (see app.tcss)."""

    def show(self, data: TileData) -> None:
        self.border_title = data.title
        self.update(data.body)
        for state in STATES:
            self.set_class(state == data.state, f"-{state}")


class TileRow(Horizontal):
    """A row of tiles; `show` adds, updates and removes tiles by key, in order."""

    def show(self, tiles: Sequence[TileData]) -> None:
        wanted = {f"tile-{t.key}" for t in tiles}
        for child in list(self.children):
            if child.id not in wanted:
                child.remove()
        existing = {child.id: child for child in self.children}
        for data in tiles:
            tile = existing.get(f"tile-{data.key}")
            if not isinstance(tile, Tile):
                tile = Tile(id=f"tile-{data.key}", classes="tile")
                self.mount(tile)
            tile.show(data)
