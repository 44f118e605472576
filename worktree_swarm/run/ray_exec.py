"""The Ray executor, coordinator side: tasks run as detached Ray actors on a cluster's nodes.

The scheduler, the gates, the budget and the store stay in this process, as with the local
executor; Ray only places and runs agents. Each attempt is one named, detached actor
(:class:`worktree_swarm.run.ray_node.NodeAgent`) in the run's namespace, asking for one
``agent_slot`` and ``ray_memory`` bytes, with every Ray retry and restart off: a second agent
on the same branch is never started behind swarm's back. The task's branch lives on the
remote the nodes share; this process creates it there, mirrors the attempt's log into the
run directory (``swarm logs -f`` reads it as usual) and fetches the branch back after every
attempt, so merge, diff, report and PR work on the local repository. An actor or node that is
gone is a lost attempt: the task goes on in a fresh attempt elsewhere, from its last pushed
checkpoint. Ray itself is imported only when this executor is used.

This module keeps a task's course through its attempts (:class:`RayTaskWorker`); one attempt
(launched, watched, checked, recorded) is :mod:`worktree_swarm.run.ray_attempt_run`'s, the
actors themselves (placed, called, mirrored, taken down) :mod:`worktree_swarm.run.ray_attempt`'s,
taking over from a coordinator that died :mod:`worktree_swarm.run.ray_resume`'s.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from worktree_swarm.agents import provider_of
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as git
from worktree_swarm.git import worktrees
from worktree_swarm.git.leaks import Leak
from worktree_swarm.run.course import Course, stated_window
from worktree_swarm.run.gate_model import Limit, Signal
from worktree_swarm.run.ray_actors import NodeLostError, UnansweredError
from worktree_swarm.run.ray_attempt import Ended, Handle, Throttled
from worktree_swarm.run.ray_attempt_run import RayAttemptRun, end_failed
from worktree_swarm.run.ray_cluster import ClusterLostError
from worktree_swarm.run.retry import in_the_way
from worktree_swarm.run.run_worker import Live, TaskOutcome, worktree_path

# Lost attempts a task may have before it fails: a task that kills its nodes is not retried
# for ever.
MAX_LOSSES = 3


@dataclass(slots=True, kw_only=True)
class _Count:
    """A task's attempts in this coordinator: the last one's number, those lost to nodes."""

    number: int
    losses: int = 0


class RayTaskWorker(RayAttemptRun):
    """Runs tasks of one run on a Ray cluster; shared by all worker threads, like TaskWorker."""

    def run(self, live: Live) -> TaskOutcome:
        """Take *live*'s task to a final outcome on the cluster.

        With the cluster lost, the task goes back to ``pending`` (its attempt ended as lost,
        its branch fetched as last pushed): `swarm resume` carries it on.
        """
        task = live.task
        # The task's branch is its own (the fetches move it) until it ends.
        with self.guard.busy(task.id, worktree_path(self.spec, task)):
            try:
                outcome = self._run(live)
            except ClusterLostError as exc:
                return self._interrupted(task, str(exc))
            if outcome.state is TaskState.STOPPED and self.head.lost is not None:
                return self._interrupted(task, self.head.lost)  # stopped for the loss
            return outcome

    def _interrupted(self, task: Task, why: str) -> TaskOutcome:
        """The task, cut off by the loss of the cluster (*why*), waits for `swarm resume`."""
        self._keep_pushed(task)
        self.store.update_task(self.run_id, task.id, launching=None)
        return TaskOutcome(
            state=TaskState.PENDING,
            reason=f"interrupted: {why}; its work is kept on {task.branch} as last pushed",
        )

    def _keep_pushed(self, task: Task, ended: tuple[Handle, Live] | None = None) -> None:
        """Fetch the task's branch as its nodes last pushed it, and record what it holds.

        After an attempt cut off (its node or the cluster lost, a node-side failure): a task
        stopped or failed then, its branch here still at its base, lost that work to `swarm
        clean` (and its remote branch to a retry's push). The attempt's node, still there
        (*ended*), looks through its agent's own commits for its own secrets too.
        """
        row = self.store.task(self.run_id, task.id)
        base = row.base_commit if row is not None else None
        found: list[Leak] = []
        if ended and base:  # its look failed or cut off: the branch is fetched all the same
            with contextlib.suppress(SwarmError):
                found = self._node_leaks(ended[0].actor, task, base, ended[1])
        with contextlib.suppress(SwarmError):  # the remote may be gone as well
            self._fetch(task)
            if row is not None and row.base_commit:
                tip = git.rev_parse(self.repo, task.branch) or row.base_commit
                self._record_node_leaks(task, found)
                self._record_own_commits(task, row.base_commit, tip)
                self._record_diff(task.id, row.base_commit, tip)

    def _run(self, live: Live) -> TaskOutcome:
        task = live.task
        base = self._base(task)
        if isinstance(base, TaskOutcome):
            return base
        previous = self.store.attempts(self.run_id, task.id)
        course = self._course(task, previous)
        resumed, live.resume_from = live.resume_from, None
        ended: Ended | None = None
        handle: Handle | None = None
        if resumed is not None and resumed.ended_at is not None:
            ended = self._replay(live, course, base, resumed)
            count = _Count(number=resumed.number)
        else:
            handle = self._adopt_any(live, resumed)
            last = max((a.number for a in previous), default=0)
            count = _Count(number=handle.number if handle is not None else last)
        while True:
            if ended is None:
                ended, handle = self._next(live, course, base, handle, count), None
                if ended is None:
                    continue
            now, ended = ended, None
            if isinstance(now, TaskOutcome):
                return now
            if isinstance(now, Throttled):  # rate limited: wait, then resume
                failed = self._rate_limited(task, count.number, now, course)
                if failed is not None:
                    return TaskOutcome(state=TaskState.FAILED, reason=failed)
                continue
            self._completed(task.id, course)
            out = self._repair(task, course, now)
            if out is not None:
                return out

    def _next(
        self, live: Live, course: Course, base: str, handle: Handle | None, count: _Count
    ) -> Ended | None:
        """The next attempt (*handle*: one adopted) run to its end; None: lost, go on."""
        task = live.task
        provider = provider_of(task.agent)
        if handle is None:
            got = self._new_attempt(live, course, count.number + 1)
            if isinstance(got, TaskOutcome):
                return got
            if got is None:  # its node went before the agent started
                count.number, count.losses = count.number + 1, count.losses + 1
                if count.losses > MAX_LOSSES:
                    self._keep_pushed(task)
                    return TaskOutcome(state=TaskState.FAILED, reason="no node kept it")
                return None
            handle = got
            count.number = handle.number
        else:
            self.gate.adopt(provider)
            live.adopted.set()
        cost: list[float | None] = [None]
        try:
            return self._attempt(live, handle, base, course, cost)
        except ClusterLostError as exc:  # nothing of it can be reached: it ends here only
            end_failed(self.store, handle, str(exc))  # unless its end is on record
            self.disk.released(handle.node, task.id)
            raise
        except NodeLostError as exc:
            count.losses += 1
            self._lost(task, handle, exc)
            if count.losses > MAX_LOSSES:
                return TaskOutcome(
                    state=TaskState.FAILED,
                    reason=f"lost {count.losses} attempts to failed nodes ({exc}); work kept "
                    f"on {task.branch}",
                )
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            course.interrupted()
            return None
        except SwarmError as exc:  # a node-side failure (git): the attempt fails
            self._keep_pushed(task, (handle, live))  # what it pushed (its last checkpoint)
            self._end(handle, str(exc))
            raise
        finally:
            self.gate.release(provider, cost_usd=cost[0])

    def _base(self, task: Task) -> str | TaskOutcome:
        """The commit the task's branch started from, made here and on the remote first."""
        row = self.store.task(self.run_id, task.id)
        if row is not None and row.base_commit:
            return row.base_commit
        recorded = row.start_commit if row is not None else None
        start = recorded or self._start_commit(task)
        if isinstance(start, TaskOutcome):
            return start
        if not recorded:  # a branch there before the intent is someone else's: never taken
            try:
                worktrees.check_free(self.repo, task.branch)
            except worktrees.InTheWayError as exc:
                reason = in_the_way(self.store, self.run_id, task.id, exc)
                return TaskOutcome(state=TaskState.FAILED, reason=reason)
        self.store.update_task(self.run_id, task.id, start_commit=start)
        self._publish(task, start)
        self.store.update_task(self.run_id, task.id, base_commit=start)
        return start

    def _rate_limited(
        self, task: Task, number: int, throttled: Throttled, course: Course
    ) -> str | None:
        """Tell the gate; why the task fails, or None: it resumes at ``course.not_before``."""
        result = throttled.result
        window = throttled.window
        window = stated_window(result, time.time()) if window is None else window
        provider = provider_of(task.agent)
        # A replayed throttle was told when it happened, as one its stream told; a replayed
        # one's recorded wait is its own backoff. A window is told again: its end confirms it.
        if window or not (throttled.replayed or throttled.told):
            kind = Signal.WINDOW if window else Signal.THROTTLE
            detail = "usage limit" if window else "rate limited"
            limit = Limit(signal=kind, retry_at=result.retry_at, detail=detail)
            # A replayed window was applied by the manager that was told it: claimed again,
            # no second throttle of the provider (as a local run's resume recalls it).
            recalled = bool(window) and throttled.replayed
            self.gate.report(provider, limit, task=task.id, whole_attempt=True, recalled=recalled)
        failed = course.throttled(
            task,
            result,
            self.gate,
            provider=provider,
            replayed=throttled.counted,
            progressed=throttled.progressed,
            window=window,
        )
        if failed is not None:
            return failed
        self._resting(task.id, number, course)
        return None

    def _lost(self, task: Task, handle: Handle, exc: NodeLostError) -> None:
        """Record a lost attempt; the task goes on elsewhere from its last pushed checkpoint."""
        silent = isinstance(exc, UnansweredError)
        self._end(handle, f"node {handle.node} lost: {exc}", silent=silent)
        self._keep_pushed(task)  # here at once: a task stopped now ends with it
        self._emit("node_lost", task.id, {"attempt": handle.number, "node": handle.node})
        self._state(
            task.id,
            TaskState.PENDING,
            reason=f"node {handle.node} lost; resuming elsewhere from the last pushed checkpoint",
        )
