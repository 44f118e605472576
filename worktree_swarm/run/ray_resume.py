"""Resuming a Ray task after its coordinator died: live actors adopted, ended attempts replayed.

A coordinator killed while its attempts ran leaves their actors working on their nodes, and
the store saying how far it got. The next one (`swarm resume`) takes over an open attempt's
actor (or one launched and not yet recorded), or follows on from an attempt that ended: a
rate-limited one waits out its limit, a successful one is checked on a fresh clone if its
checks may not have run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from worktree_swarm.agents import AgentOutcome, AgentResult
from worktree_swarm.core.models import AttemptOutcome, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.git import diffs
from worktree_swarm.git import repo as git
from worktree_swarm.infra.logtail import mirrored
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.run.agent_watch import read_log
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.course import Course, decided, stated_limit
from worktree_swarm.run.ray_actors import NodeLostError, actor_name, namespace
from worktree_swarm.run.ray_attempt import (
    NO_IDENTITY,
    Ended,
    Handle,
    RayAttempts,
    Throttled,
)
from worktree_swarm.run.ray_cluster import ray_module
from worktree_swarm.run.ray_node import Progress
from worktree_swarm.run.run_worker import Live, TaskOutcome
from worktree_swarm.run.unwatched import end_as_logged


class RayResume(RayAttempts):
    """The Ray coordinator's worker as it takes over from a previous one (see the module)."""

    def _adopt_any(self, live: Live, attempt: AttemptRow | None) -> Handle | None:
        """The open attempt's actor, or one launched unrecorded; else a new attempt is due."""
        handle = self._adopt(live.task, attempt) or self._adopt_unrecorded(live.task)
        if handle is None:  # nothing to adopt: a new attempt waits for its slot
            live.adopted.set()
        return handle

    def _adopt(self, task: Task, attempt: AttemptRow | None) -> Handle | None:
        """The live actor of an open attempt a previous coordinator started, if still there."""
        if attempt is None:
            return None
        handle = self._find(task, attempt.number, attempt.id, Path(attempt.log_path))
        if handle is None:
            # Its actor is gone with its node (or was never made): a lost attempt, with what
            # its log copied here says its agent used.
            gone = (AttemptOutcome.FAILED, "its actor was gone when the run was resumed")
            end_as_logged(
                self.store, attempt, attempt.agent or task.agent, exit_code=None, cut=gone
            )
            return None
        handle.started_at = attempt.started_at
        self._emit("agent_adopted", task.id, {"attempt": attempt.number, "alive": True})
        return handle

    def _adopt_unrecorded(self, task: Task) -> Handle | None:
        """The actor a killed coordinator launched but did not record, if it is there."""
        row = self.store.task(self.run_id, task.id)
        if row is None or row.launching is None:
            return None
        number = row.launching
        log_path = self._logs_root / task.id / f"attempt-{number}.log"
        handle = self._find(task, number, 0, log_path)
        if handle is None:
            self.store.update_task(self.run_id, task.id, launching=None)
            return None
        try:  # started, or it never ran
            progress: Progress = ray_module().get(handle.actor.poll.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - not started: retire it, start afresh
            self._retire(handle)
            self.store.update_task(self.run_id, task.id, launching=None)
            return None
        # Its start as its node saw it, as the Ray stop records one.
        handle.started_at = progress.started_at or handle.started_at
        # With its task's count (one transaction): the launch is an intent or an attempt.
        handle.attempt_id = self.store.record_attempt(
            self.run_id,
            task.id,
            number=number,
            identity=NO_IDENTITY,
            log_path=str(log_path),
            started_at=handle.started_at,
            agent=row.launching_agent or task.agent,
        )
        return handle

    def _find(self, task: Task, number: int, attempt_id: int, log_path: Path) -> Handle | None:
        ray = ray_module()
        name, space = actor_name(task.id, number), namespace(self.run_id)
        try:
            actor = ray.get_actor(name, namespace=space)
        except Exception:  # noqa: BLE001 - not found, or dead: gone
            return None
        try:
            node = ray.get(actor.node.remote(), timeout=self.spec.lost_after)
        except Exception:  # noqa: BLE001 - unreachable, or still waiting for a slot
            # Gone for this run: it must not start an agent later, nor keep its slot and its
            # name (the next attempt of that number is made under it); what it started on
            # its node (the recorded one of the task's newest attempt) is ended there.
            row = self.store.task(self.run_id, task.id)
            where = row.node if row is not None and row.attempts == number and row.node else ""
            self._silence(actor, task.id, number, where)
            self._emit("actor_gone", task.id, {"attempt": number, "why": "did not answer"})
            return None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        self.disk.adopted(str(node), task.id)
        return Handle(
            actor=actor,
            task_id=task.id,
            number=number,
            attempt_id=attempt_id,
            started_at=time.time(),
            log_path=log_path,
            node=str(node),
            offset=mirrored(log_path),
        )

    def _replay(self, live: Live, course: Course, base: str, attempt: AttemptRow) -> Ended | None:
        """The last attempt of a previous coordinator, which ended: what follows from it.

        A rate-limited one waits out what it was waiting for (one whose wait its coordinator
        did not decide, for the limit its agent stated), then resumes; a successful one
        is checked (its checks may not have run); None: a new attempt goes on with the task.
        """
        task = live.task
        self._fetch(task)
        tip = git.rev_parse(self.repo, task.branch) or base
        self._record_own_commits(task, base, tip)  # a coordinator killed before it did
        stat = diffs.diff_stat(self.repo, base, tip)
        progressed = course.progressed(stat)
        outcome = AttemptOutcome.parse(attempt.outcome)
        if outcome is AttemptOutcome.RATE_LIMITED:
            retry_at, window = attempt.retry_at, attempt.usage_window
            if not decided(attempt):  # its limit as the agent said it, read again
                # The copy here is whole: an attempt is recorded only once its log is copied.
                text = read_log(Path(attempt.log_path))
                retry_at, window = stated_limit(attempt, task.agent, text)
            result = AgentResult(
                outcome=AgentOutcome.RATE_LIMITED,
                reason=attempt.reason,
                session_id=attempt.session_id,
                retry_at=retry_at,  # the wait it was in: resuming does not restart it
            )
            return Throttled(
                result=result,
                progressed=progressed,
                replayed=True,
                # Undecided, it is in no count of the store's: it uses its retry now.
                counted=decided(attempt),
                window=window,
            )
        if outcome is not AttemptOutcome.SUCCEEDED:
            state = {
                AttemptOutcome.STOPPED: TaskState.STOPPED,
                AttemptOutcome.TIMED_OUT: TaskState.TIMED_OUT,
            }.get(outcome, TaskState.FAILED)
            return TaskOutcome(state=state, reason=attempt.reason)
        if stat.files == 0:
            return TaskOutcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
        if not (task.checks or task.expect_files or task.no_placeholders):
            return TaskOutcome(state=TaskState.DONE)
        try:
            failure = self._recheck(live, base, attempt)
        except NodeLostError:  # the agent goes on and its next attempt is checked
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            course.interrupted()
            return None
        return TaskOutcome(state=TaskState.DONE) if failure is None else failure

    def _recheck(self, live: Live, base: str, attempt: AttemptRow) -> CheckFailure | None:
        """Check *attempt*'s branch on a fresh clone: its coordinator died before its checks.

        The actor that ran them, if still there, is retired first.
        """
        task = live.task
        old = self._find(task, attempt.number, attempt.id, Path(attempt.log_path))
        if old is not None:
            self._retire(old)
        if not self.head.answers(live.stop):
            raise NodeLostError("stopped before its checks")
        handle = Handle(
            actor=self._actor(self._assignment(task, attempt.number)),
            task_id=task.id,
            number=attempt.number,
            attempt_id=attempt.id,
            started_at=time.time(),
            log_path=Path(attempt.log_path),
            node="",
            counted=True,  # its end is on record: a failure here is its task's
        )
        try:
            node = self._call(handle.actor, "node", live=live, placing=True)
            if live.stop.is_set():
                raise NodeLostError("stopped before its checks")
            handle.node = str(node)
            self._admit(live, handle.actor, handle.node)
            self._call(handle.actor, "prepare", live=live)
            if task.setup:
                failure, text = self._call(
                    handle.actor, "setup", live=live, on_stop=handle.actor.stop.remote
                )
                self._append_log(task, "setup.log", text)
                if failure is not None:
                    return cast("CheckFailure", failure)
            return self._check(live, handle, base)
        finally:
            self._retire(handle)
