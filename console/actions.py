"""The one registry of what an operator can do in the console.

Each `ActionSpec` names a Textual action, its key, what it says in the footer, help and command
palette, where it applies, and whether it is dangerous (confirmed in a dialog) or writes
(files a request). Key bindings, the footer, the help screen and the palette are all derived
from it; read-only mode is a filter over it, not a scattered set of conditions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual.binding import Binding

APP = "app"
OVERVIEW = "overview"
STEP = "step"
CHECKS = "checks"
CHECK = "check"
CACHE = "cache"
TIMELINE = "timeline"
REQUESTS = "requests"
DIALOG = "dialog"
SCHEMA = "schema"
LINEAGE = "lineage"

TABLE_SCREENS = (OVERVIEW, STEP, CHECKS, CHECK, TIMELINE, REQUESTS)
DETAIL_SCREENS = (STEP, CHECK)


@dataclass(frozen=True)
class ActionSpec:
    """One operator action. `action` is the Textual action string run by the key."""

    action: str
    key: str
    label: str
    description: str
    scopes: tuple[str, ...]
    dangerous: bool = False
    needs_write: bool = False
    footer: bool = True
    key_display: str | None = None

    @property
    def name(self) -> str:
        """The action's method name without parameters: `show_screen('checks')` -> show_screen."""
        return self.action.split("(", 1)[0]

    @property
    def title(self) -> str:
        """How the palette and the help screen name it; dangerous actions are marked."""
        return f"{self.label} ⚠" if self.dangerous else self.label

    def binding(self) -> Binding:
        return Binding(
            self.key,
            self.action,
            self.label,
            show=self.footer,
            key_display=self.key_display,
            tooltip=self.description,
        )


SCREENS = (
    (OVERVIEW, "1", "Overview", "steps, check counts, cache tiles, agents"),
    (CHECKS, "2", "Checks", "every check with its value, band and trend"),
    (CACHE, "3", "Cache", "hit ratios over time by source and level"),
    (TIMELINE, "4", "Timeline", "runs, status changes, requests and cache dips in order"),
    (REQUESTS, "5", "Requests", "queued, running and finished requests"),
)

ACTIONS: tuple[ActionSpec, ...] = (
    *(
        ActionSpec(
            f"show_screen('{name}')",
            key,
            label,
            f"Go to {label}: {what}",
            (APP,),
            footer=False,
        )
        for name, key, label, what in SCREENS
    ),
    ActionSpec("help", "question_mark", "Help", "Keys and actions of this screen", (APP,)),
    ActionSpec("quit", "q", "Quit", "Leave the console", (APP, SCHEMA)),
    ActionSpec(
        "lineage",
        "l",
        "Lineage",
        "What reads what, and why it is in its state: on the selected step or check, or all",
        (APP,),
        footer=False,
    ),
    ActionSpec("back", "escape", "Back", "Back to the previous screen", (*DETAIL_SCREENS, LINEAGE)),
    ActionSpec(
        "open", "enter", "Open", "Open the selected row's detail", TABLE_SCREENS, footer=False
    ),
    ActionSpec(
        "rerun",
        "r",
        "Rerun",
        "Rerun the selected step now",
        (OVERVIEW, STEP),
        dangerous=True,
        needs_write=True,
    ),
    ActionSpec(
        "rerun_downstream",
        "R",
        "Rerun+down",
        "Rerun the selected step and every step downstream of it, in order",
        (OVERVIEW, STEP),
        dangerous=True,
        needs_write=True,
    ),
    ActionSpec(
        "publish",
        "P",
        "Publish anyway",
        "Publish the selected held step anyway: refresh it once more without enforcing its gates",
        (STEP,),
        dangerous=True,
        needs_write=True,
    ),
    ActionSpec(
        "pause",
        "p",
        "Pause",
        "Pause the selected step: its scheduled runs are skipped until resumed",
        (OVERVIEW, STEP),
        dangerous=True,
        needs_write=True,
    ),
    ActionSpec(
        "resume",
        "p",
        "Resume",
        "Resume the selected (paused) step",
        (OVERVIEW, STEP),
        needs_write=True,
    ),
    ActionSpec(
        "check_now",
        "c",
        "Check now",
        "Run the selected check now (every check on the overview)",
        (OVERVIEW, CHECKS, CHECK),
        needs_write=True,
    ),
    ActionSpec(
        "silence",
        "m",
        "Silence",
        "Silence the selected check for a while: it keeps recording but raises no alert",
        (CHECKS, CHECK),
        dangerous=True,
        needs_write=True,
    ),
    ActionSpec(
        "unsilence",
        "m",
        "Unsilence",
        "End the selected check's silence now",
        (CHECKS, CHECK),
        needs_write=True,
    ),
    ActionSpec(
        "incident_rerun",
        "x",
        "Incident: rerun",
        "Rerun the step the selected incident points to, with everything downstream of it",
        (OVERVIEW,),
        dangerous=True,
        needs_write=True,
        footer=False,
    ),
    ActionSpec(
        "incident_silence",
        "z",
        "Incident: silence",
        "Mute the first failing check of the selected incident for a while (it keeps recording)",
        (OVERVIEW,),
        dangerous=True,
        needs_write=True,
        footer=False,
    ),
    ActionSpec(
        "incident_why",
        "i",
        "Incident: why",
        "Open the selected incident's root cause: its lineage, state and impact",
        (OVERVIEW,),
        footer=False,
    ),
    ActionSpec(
        "incident_next",
        "n",
        "Incident: next",
        "Select the next incident (the keys x, z and i act on it)",
        (OVERVIEW,),
        footer=False,
    ),
    ActionSpec("window", "w", "Window", "Show a longer or shorter time window", (CACHE, TIMELINE)),
    ActionSpec("filter", "slash", "Filter", "Filter the rows by text", TABLE_SCREENS),
    ActionSpec(
        "clear_filter",
        "escape",
        "Clear filter",
        "Clear the filter applied to the rows (on a detail screen, then Esc goes back)",
        TABLE_SCREENS,
    ),
    ActionSpec("sort", "s", "Sort", "Sort by the next column", TABLE_SCREENS, footer=False),
    ActionSpec("reverse", "S", "Reverse", "Reverse the sort order", TABLE_SCREENS, footer=False),
    ActionSpec("cancel", "escape", "Cancel", "Close without doing anything", (DIALOG,)),
    ActionSpec(
        "reload",
        "ctrl+r",
        "Refresh",
        "Read this screen again now; reconnect at once when disconnected",
        (APP, SCHEMA),
        footer=False,
    ),
)


class ActionRegistry:
    """The actions available to this console: all of them, or the read-only subset."""

    def __init__(self, specs: Iterable[ActionSpec] = ACTIONS, *, read_only: bool = False):
        self.all = tuple(specs)
        self.read_only = read_only

    def permitted(self) -> tuple[ActionSpec, ...]:
        return tuple(s for s in self.all if self.permits_spec(s))

    def permits_spec(self, spec: ActionSpec) -> bool:
        return not (self.read_only and spec.needs_write)

    def permits(self, action_name: str) -> bool:
        """False for a write action in read-only mode; True for anything not registered."""
        specs = [s for s in self.all if s.name == action_name or s.action == action_name]
        return all(self.permits_spec(s) for s in specs)

    def for_scope(self, scope: str) -> tuple[ActionSpec, ...]:
        """Permitted actions of a screen, then the app-wide ones."""
        return tuple(s for s in self.permitted() if scope in s.scopes)

    def hidden(self) -> tuple[ActionSpec, ...]:
        """What read-only mode takes away (shown as such on the help screen)."""
        return tuple(s for s in self.all if not self.permits_spec(s))


def bindings(scope: str) -> list[Binding]:
    """BINDINGS for a screen (or the app): every registered action of that scope. Whether
    each is usable right now (read-only, selection) is decided by `check_action`."""
    return [spec.binding() for spec in ACTIONS if scope in spec.scopes]
