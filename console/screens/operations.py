"""The write actions, shared by the screens that show steps or checks.

Dangerous ones open a dialog first; every one ends as a request row filed by the App, whose
progress comes back as toasts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta

from textual import on, work

from pipectl.console.data import RequestIntent
from pipectl.console.messages import ActionFailed, PlanReady
from pipectl.console.screens.base import ConsoleScreen
from pipectl.console.screens.dialogs import PauseDialog, RerunDialog, SilenceDialog
from pipectl.console.service import NotConnected
from pipectl.durations import format_duration
from pipectl.request_args import RerunArgs, SilenceArgs
from pipectl.store.console import rerun_plan

STEP_ACTIONS = frozenset({"rerun", "rerun_downstream", "pause", "resume"})
CHECK_ACTIONS = frozenset({"silence", "unsilence"})


@dataclass(frozen=True)
class Selected:
    """The step or check an action would apply to, and whether it is paused / silenced."""

    name: str
    held: bool


class StepOperations(ConsoleScreen):
    """Rerun (alone or with downstream), pause, resume the selected step."""

    def selected_step(self) -> Selected | None:
        """The step the actions apply to (None: none selected); every screen implements it."""
        raise NotImplementedError

    def step_action_state(self, action: str) -> bool | None:
        if action not in STEP_ACTIONS:
            return True
        selected = self.selected_step()
        if selected is None:
            return None if action != "resume" else False
        if action == "pause":
            return not selected.held
        if action == "resume":
            return selected.held
        return True

    def action_rerun(self) -> None:
        self._plan(downstream=False)

    def action_rerun_downstream(self) -> None:
        self._plan(downstream=True)

    def _plan(self, downstream: bool) -> None:
        selected = self.selected_step()
        if selected is not None:
            self._fetch_plan(selected.name, downstream)

    @work(exclusive=True, group="plan", exit_on_error=False)
    async def _fetch_plan(self, step: str, downstream: bool) -> None:
        fetch = functools.partial(rerun_plan, step=step, downstream=downstream)
        try:
            plan = await self.console.service.query(fetch)
        except NotConnected as exc:
            self.post_message(ActionFailed(f"not connected: {exc}"))
        except Exception as exc:
            self.post_message(ActionFailed(f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(PlanReady(step, plan))

    @on(PlanReady)
    def _confirm_rerun(self, message: PlanReady) -> None:
        plan = message.plan
        if plan is None:
            self.notify(f"unknown step {message.step!r}", severity="error", markup=False)
            return
        names = [s.name for s in plan.steps]
        summary = " → ".join(names)

        def file(reason: str | None) -> None:
            if reason is not None:
                self.console.file_request(
                    RequestIntent(
                        "rerun", plan.step, reason, RerunArgs(downstream=plan.downstream), summary
                    )
                )

        self.app.push_screen(RerunDialog(plan), file)

    def action_pause(self) -> None:
        selected = self.selected_step()
        if selected is None:
            return

        def file(reason: str | None) -> None:
            if reason is not None:
                self.console.file_request(RequestIntent("pause", selected.name, reason))

        self.app.push_screen(PauseDialog(selected.name), file)

    def action_resume(self) -> None:
        selected = self.selected_step()
        if selected is not None:
            self.console.file_request(RequestIntent("resume", selected.name))

    @on(ActionFailed)
    def _action_failed(self, message: ActionFailed) -> None:
        self.notify(message.error, title="Action not possible", severity="error", markup=False)


class CheckOperations(ConsoleScreen):
    """Run checks now, silence and unsilence the selected check."""

    def selected_check(self) -> Selected | None:
        """The check the actions apply to (None: none selected); every screen implements it."""
        raise NotImplementedError

    def check_action_state(self, action: str) -> bool | None:
        if action not in CHECK_ACTIONS:
            return True
        selected = self.selected_check()
        if selected is None:
            return None if action != "unsilence" else False
        return selected.held if action == "unsilence" else not selected.held

    def action_check_now(self) -> None:
        selected = self.selected_check()
        target = selected.name if selected is not None else "*"
        summary = "every check" if target == "*" else target
        self.console.file_request(RequestIntent("check", target, summary=summary))

    def action_silence(self) -> None:
        selected = self.selected_check()
        if selected is None:
            return

        def file(answer: tuple[float, str] | None) -> None:
            if answer is not None:
                span, reason = answer
                self.console.file_request(
                    RequestIntent(
                        "silence",
                        selected.name,
                        reason,
                        SilenceArgs(seconds=span),
                        f"{selected.name} for {format_duration_seconds(span)}",
                    )
                )

        self.app.push_screen(SilenceDialog(selected.name), file)

    def action_unsilence(self) -> None:
        selected = self.selected_check()
        if selected is not None:
            self.console.file_request(RequestIntent("unsilence", selected.name))


def format_duration_seconds(span: float) -> str:
    return format_duration(timedelta(seconds=span))
