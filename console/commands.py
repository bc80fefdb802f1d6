"""The command palette (ctrl+p) lists the registry's actions usable on the current screen."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape

from pipectl.console.actions import APP, ActionSpec
from pipectl.console.screens.help import key_label, scope_of

if TYPE_CHECKING:
    from pipectl.console.app import PipectlApp


class ActionCommands(Provider):
    """One command per permitted action of this screen and of the app."""

    def _commands(self) -> Iterator[tuple[str, str, ActionSpec]]:
        app = cast("PipectlApp", self.app)
        screen = self.screen
        for scope in (scope_of(screen), APP):
            node = app if scope == APP else screen
            for spec in app.registry.for_scope(scope):
                if node.check_action(spec.name, ()) is False:
                    continue
                # The palette reads help text as markup: escaped, `[/]` (the filter key) is the
                # key shown, not a closing tag.
                yield (
                    spec.title,
                    escape(f"{spec.description} [{key_label(spec)}]"),
                    spec,
                )

    async def discover(self) -> Hits:
        for title, help_text, spec in self._commands():
            yield DiscoveryHit(Text(title), self._runner(spec), text=title, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, spec in self._commands():
            score = matcher.match(f"{title} {spec.description}")
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(escape(title)),
                    self._runner(spec),
                    text=title,
                    help=help_text,
                )

    def _runner(self, spec: ActionSpec) -> Callable[[], Awaitable[object]]:
        node = self.app if APP in spec.scopes else self.screen
        return functools.partial(node.run_action, spec.action)
