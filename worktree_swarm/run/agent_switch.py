"""Which agent a task's next attempt goes to: after a rate limit, and before each attempt.

After a rate-limited attempt: a fallback agent takes over, or the task waits, or it fails.
Before an attempt: the budget agent once the run passed its budget share, or a fallback
past its provider's usage window. The agent that takes over is handed the work so far.
"""

from __future__ import annotations

import time
from pathlib import Path

from worktree_swarm.agents import AgentResult, provider_of
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as git
from worktree_swarm.report import notes
from worktree_swarm.run import fallback
from worktree_swarm.run.course import Course, stated_window
from worktree_swarm.run.run_worker import RunWorker, TaskOutcome


class AgentSwitch(RunWorker):
    """Decides which agent goes on with a task, and hands it over (a task worker's part)."""

    def _rate_limited(
        self,
        task: Task,
        path: Path,
        base: str,
        number: int,
        course: Course,
        result: AgentResult,
        *,
        replayed: bool,
        progressed: bool,
        window: bool | None,
        kept: bool,
    ) -> TaskOutcome | None:
        """Decide what follows a rate-limited attempt: another agent, a wait, or the end.

        *progressed*: the attempt changed the work before its limit (an agent that ends on
        every 429 of a storm): it goes on after the gate's pacing, without a backoff of its own.
        *window*: whether the limit was a usage window, as recorded (None: from its reset).
        *kept*: the task's branch holds work.
        """
        provider = provider_of(course.agent)
        own = stated_window(result, time.time()) if window is None else window
        window = own or self.gate.window_until(provider) is not None
        # A replayed attempt is already counted in the course: it had one retry more left.
        spent = course.retries_left < 0 if replayed else course.retries_left <= 0
        spent = spent and not course.uses_no_retry(progressed=progressed, replayed=replayed)
        nxt = fallback.next_agent(task, course.agent, self.gate) if window or spent else None
        if nxt is not None:
            why = "usage limit" if window else "out of rate-limit retries"
            if window:  # on record, as a wait is: a resumed manager learns the window again
                reset = max(result.retry_at or 0.0, self.gate.window_until(provider) or 0.0)
                self.store.set_retry_at(self.run_id, task.id, number, reset, window=True)
            self._instruct(task.id, course, self._handover(task, path, base, course.agent, why))
            # Not pending: a resumed manager replays this attempt, and hands over again.
            self._state(task.id, TaskState.RATE_LIMITED, reason=f"{why}; {nxt} takes over")
            course.take_over(nxt, task)
            return None
        failed = course.throttled(
            task,
            result,
            self.gate,
            provider=provider,
            replayed=replayed,
            progressed=progressed,
            window=own,
            kept=kept,
        )
        if failed is not None:
            return TaskOutcome(state=TaskState.FAILED, reason=failed)
        self._resting(task.id, number, course)
        return None

    def _maybe_switch(
        self, task: Task, path: Path, base: str, course: Course, *, started: bool
    ) -> None:
        """Before an attempt: hand over to the budget agent, or past a usage window."""
        switch = self._switch(task, course.agent)
        if switch is None:
            return
        nxt, why = switch
        handover = self._handover(task, path, base, course.agent, why) if started else None
        self._instruct(task.id, course, handover)
        self._state(task.id, TaskState.PENDING, reason=f"{why}; {nxt} takes over")
        course.take_over(nxt, task)

    def _switch(self, task: Task, agent: str) -> tuple[str, str] | None:
        """Before an attempt: the agent to switch to and why (budget share, usage window)."""
        cheap = fallback.economy_agent(task, agent, self.gate)
        if cheap is not None:
            return cheap, f"the run passed {self.spec.budget_share:.0%} of its budget"
        if self.gate.window_until(provider_of(agent)) is not None:
            nxt = fallback.next_agent(task, agent, self.gate)
            if nxt is not None:
                return nxt, f"{provider_of(agent)} is in a usage window"
        return None

    def _handover(self, task: Task, path: Path, base: str, previous: str, why: str) -> str:
        """The prompt of the agent that takes over from *previous*."""
        prompt = fallback.handover_prompt(
            task=task,
            repo=self.repo,
            base=base,
            tip=git.rev_parse_in(path, "HEAD") or base,
            previous_agent=previous,
            why=why,
            findings=self._findings,
        )
        return prompt + notes.findings_instructions(str(self._findings))
