"""One attempt of a Ray task, as its coordinator runs it: launched, watched, checked, recorded.

:class:`RayAttemptRun` is the part of the Ray executor's worker that takes one attempt from its
gate slot to its end: the actor launched on a node (prepared, set up, its session restored, its
agent started once), its log followed and its agent cut short (stop, timeout, idle, max_log),
then checkpointed on the node, fetched, recorded in the store and checked. What the attempts
mean for their task (lost nodes, rate limits, repairs) is :mod:`worktree_swarm.run.ray_exec`'s.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, cast

from worktree_swarm.agents import AgentOutcome, AgentResult, adapter_for, provider_of
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import AttemptOutcome, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import one_line, paths_text
from worktree_swarm.git import committed_secrets, diffs
from worktree_swarm.git import repo as git
from worktree_swarm.git.leaks import Leak
from worktree_swarm.guard.model import Violation
from worktree_swarm.infra import scrub
from worktree_swarm.infra.logtail import read_log_end
from worktree_swarm.infra.redact import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptUsage
from worktree_swarm.run.agent_watch import idle_reason, past_max_log
from worktree_swarm.run.attempt_record import attempt_outcome, attempt_usage, attempts_own
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.course import Course, past_max_wait
from worktree_swarm.run.gate_model import Limit, Signal
from worktree_swarm.run.live_limits import LogTail
from worktree_swarm.run.ray_actors import NodeLostError, UnansweredError
from worktree_swarm.run.ray_attempt import (
    NO_IDENTITY,
    POLL_SECONDS,
    Ended,
    Handle,
    Throttled,
    size_of,
)
from worktree_swarm.run.ray_cluster import ClusterLostError, ray_module
from worktree_swarm.run.ray_node import Progress
from worktree_swarm.run.ray_resume import RayResume
from worktree_swarm.run.run_worker import Live, TaskOutcome, check_failed


class _SetupFailedError(SwarmError):
    """A `setup` step failed on the node: the task ends with it."""

    def __init__(self, failure: CheckFailure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


class RayAttemptRun(RayResume):
    """The Ray coordinator's worker as it runs one attempt (see the module)."""

    def _new_attempt(self, live: Live, course: Course, number: int) -> Handle | TaskOutcome | None:
        """A gate slot and a launched attempt; an outcome ends the task, None: node lost."""
        task = live.task
        provider = provider_of(task.agent)
        refused = self.gate.acquire(
            provider,
            live.stop,
            not_before=course.not_before,
            max_wait=task.max_wait,
            rank=live.rank,
        )
        if refused == "max_wait":  # a usage window reported meanwhile, by any task
            reset = self.gate.window_until(provider) or time.time()
            return TaskOutcome(state=TaskState.FAILED, reason=past_max_wait(task, provider, reset))
        if refused:
            why = "budget reached" if refused == "budget" else "stopped"
            return TaskOutcome(state=TaskState.STOPPED, reason=f"{why} before it started")
        try:
            return self._launch(live, course, number)
        except _SetupFailedError as exc:
            self.gate.release(provider)
            return check_failed(exc.failure)
        except NodeLostError:
            self.gate.release(provider)
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            return None
        except SwarmError:
            self.gate.release(provider)
            raise

    def _launch(self, live: Live, course: Course, number: int) -> Handle:
        task = live.task
        prompt = course.prompt
        ray = ray_module()
        assignment = self._assignment(task, number)
        if not self.head.answers(live.stop):
            raise NodeLostError("stopped before it started")
        # The intent first, with the task's state and its repair round counted (one
        # transaction): a coordinator killed from here on finds the actor by its name.
        intent = self._repair_charged(task, course)
        intent["launching"], intent["launching_agent"], intent["node"] = number, task.agent, None
        self._running(task.id, number, **intent)
        actor = self._actor(assignment)
        node: object = None  # unknown until the actor answers (it may never)
        try:
            node = self._call(actor, "node", live=live, placing=True)
            if live.stop.is_set():
                raise NodeLostError("stopped before it started")
            self.store.update_task(self.run_id, task.id, node=str(node))
            self._admit(live, actor, str(node))
            self._call(actor, "prepare", live=live)
            if task.setup:
                failure, text = self._call(actor, "setup", live=live, on_stop=actor.stop.remote)
                self._append_log(task, "setup.log", text)
                if failure is not None:
                    raise _SetupFailedError(failure)
            # The session an earlier attempt (maybe on another node) handed back goes on;
            # without one a fresh agent is told the task again, then what to do now.
            session = self._restore_session(live, actor) if prompt is not None else None
            text = task.prompt if prompt is None else f"{task.prompt}\n\n{prompt}"
            if session is not None:
                text = cast("str", prompt)
            self._call(
                actor,
                "start",
                prompt=text,
                session=session,
                resume_prompt=prompt,
                live=live,
                once=True,  # never twice: a second agent on the same branch
            )
        except SwarmError as exc:  # lost, or a node-side failure (git, setup): no actor is left
            if isinstance(exc, ClusterLostError):  # gone with the cluster
                raise
            if isinstance(exc, UnansweredError):  # it may have started the agent meanwhile
                self._silence(actor, task.id, number, "" if node is None else str(node))
                raise
            with contextlib.suppress(Exception):
                ray.get(actor.discard.remote(), timeout=30)
            with contextlib.suppress(Exception):  # one that comes back must not run an agent
                ray.kill(actor)
            if node is not None:
                self.disk.released(str(node), task.id)
            raise
        log_path = self._logs_root / task.id / f"attempt-{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        started = time.time()
        data = {"attempt": number, "agent": task.agent, "node": node}
        # With its task's count and its event (one transaction), as a local attempt.
        attempt_id = self.store.record_attempt(
            self.run_id,
            task.id,
            number=number,
            identity=NO_IDENTITY,  # the agent's pid is on another machine
            log_path=str(log_path),
            started_at=started,
            agent=task.agent,
            event=("agent_started", data),
        )
        self._announce("agent_started", task.id, data)
        return Handle(
            actor=actor,
            task_id=task.id,
            number=number,
            attempt_id=attempt_id,
            started_at=started,
            log_path=log_path,
            node=str(node),
        )

    def _watch(
        self, live: Live, handle: Handle, stream: LogTail
    ) -> tuple[Progress, tuple[TaskState, str] | None]:
        """Follow one attempt until its agent ends or is cut short: how it ended, and the cut.

        Its log is mirrored here, what its stream says of rate limits told to the gate.
        """
        task = live.task
        # On the monotonic clock, as a local task's (a wall-clock step ended all or none); the
        # idle time too, on this machine's: a node's clock may step on its own.
        remaining = handle.started_at + task.timeout - time.time() if task.timeout else None
        deadline = None if remaining is None else time.monotonic() + max(0.0, remaining)
        cut: tuple[TaskState, str] | None = None
        size: int | None = None  # the log's size when last polled
        quiet_from = 0.0  # since when it has been that size
        while True:
            self._follow(live, handle, stream)
            progress: Progress = self._call(handle.actor, "poll", live=live)
            self._push_failed(handle, progress)
            if progress.ended:  # past max_log between two looks: as if it had been seen
                cut = past_max_log(progress.log_size, self.spec.max_log)
                break
            self._periodic(handle, live)
            now = time.monotonic()
            if progress.log_size != size:  # at first, quiet for as long as the node says
                quiet_from = now - progress.idle_seconds if size is None else now
                size = progress.log_size
            if live.stop.is_set():
                cut = (TaskState.STOPPED, "stopped")
            elif deadline is not None and now >= deadline:
                cut = (TaskState.TIMED_OUT, f"timed out after {task.timeout:g}s")
            elif task.idle_timeout and now - quiet_from >= task.idle_timeout + stream.waiting:
                cut = (TaskState.TIMED_OUT, idle_reason(task.idle_timeout, stream.waiting))
            else:  # its log is copied here too: it would fill this disk as well as the node's
                cut = past_max_log(progress.log_size, self.spec.max_log)
            if cut is not None:
                self._call(handle.actor, "stop", live=live)
                progress = self._call(handle.actor, "poll", live=live)
                break
            live.stop.wait(POLL_SECONDS)
        self._follow(live, handle, stream, whole=True)  # it ended: all it wrote
        return progress, cut

    def _push_failed(self, handle: Handle, progress: Progress) -> None:
        """Tell a new streak of running checkpoints its node failed to push, once (an event)."""
        if progress.push_failure and progress.push_failures != handle.push_failures:
            handle.push_failures = progress.push_failures
            data = {"attempt": handle.number, "node": handle.node, "reason": progress.push_failure}
            self._emit("checkpoint_push_failed", handle.task_id, data)

    def _follow(self, live: Live, handle: Handle, stream: LogTail, *, whole: bool = False) -> None:
        """Mirror the attempt's log; tell the gate what its new lines say of rate limits."""
        self._mirror(handle, live, whole=whole)
        # All of it: the stream reads at most 1 MiB a poll, the mirror may have added more.
        while True:
            read_from = stream.offset
            for limit in stream.poll(now=time.time()):
                self.gate.report(provider_of(live.task.agent), limit, task=live.task.id)
            if stream.offset == read_from:
                return

    def _attempt(
        self, live: Live, handle: Handle, base: str, course: Course, cost: list[float | None]
    ) -> Ended:
        """Watch one attempt to its end, checkpoint, fetch and check it; cost to *cost*.

        A check that fails comes back as such (a repair may follow), a rate-limited attempt as
        :class:`Throttled` (a resumed attempt follows); else the task's outcome.
        """
        task = live.task
        adapter = adapter_for(task.agent)
        # What the agent's stream says of its rate limits reaches the gate as the log comes
        # in (as a local task's), not when the attempt ends.
        provider = provider_of(task.agent)
        stream = LogTail(path=handle.log_path, profile=task.agent, offset=size_of(handle.log_path))
        progress, cut = self._watch(live, handle, stream)
        self._recopy(handle, live)
        code = None if cut is not None else progress.exit_code
        text = read_log_end(handle.log_path, 8 * 2**20)
        # What it says it used, as the budget and the store count it (a resumed session its own).
        result = attempts_own(
            self.store, self.run_id, task.id, handle.attempt_id,
            adapter.interpret(exit_code=code, log_text=text, now=time.time()),
        )  # fmt: skip
        handle.used, cost[0] = result, result.cost_usd
        if cut is None and result.outcome is not AgentOutcome.SUCCESS and self._stop_asked(live):
            cut = (TaskState.STOPPED, "stopped")  # it ended as `swarm stop` came (killed by it)
        state = cut[0] if cut else result.outcome
        message = f"swarm: checkpoint {task.id} attempt {handle.number} ({state})"
        # Trailers: the node's. None: it made no checkpoint (it had no agent), pushed nothing.
        tip: str | None = self._call(handle.actor, "finish", message=message, live=live)
        planted: list[str] = self._call(handle.actor, "planted", live=live)
        switched: str | None = self._call(handle.actor, "switched", live=live)
        self._report_planted(task, handle, planted, switched)
        left: list[str] = self._call(handle.actor, "submodule_work", live=live)
        on_node = self._node_leaks(handle.actor, task, base, live)
        # As it ended: what `swarm status` and `report` keep, and the session to go on with.
        # The attempt is over and pushed: a node lost now only loses these.
        with contextlib.suppress(NodeLostError):
            self._kept_from_node(handle, live)
        self._fetch(task)
        # What its agent committed itself of the run's secrets: before the tip is recorded.
        self._record_node_leaks(task, on_node)
        self._record_own_commits(task, base, git.rev_parse(self.repo, f"refs/heads/{task.branch}"))
        self._record(handle, code, result, cut)
        scrub.scrub_file(handle.log_path)
        if tip is None:  # the branch as it was
            tip = git.rev_parse(self.repo, f"refs/heads/{task.branch}") or base
        stat = self._record_diff(task.id, base, tip)
        big = diffs.over_size(self.repo, stat, self.spec.max_file) if cut is None else []
        if big:  # committed by the agent itself: a push of the branch would be refused
            self._retire(handle)
            reason = diffs.over_size_reason(big, self.spec.max_file)
            return TaskOutcome(state=TaskState.FAILED, reason=reason)
        progressed = course.progressed(stat)
        if cut is None and result.outcome is AgentOutcome.RATE_LIMITED:
            self._retire(handle)
            return Throttled(result=result, progressed=progressed, told=stream.limited)
        if cut is None and result.outcome is AgentOutcome.SUCCESS and not stream.succeeded:
            ok = Limit(signal=Signal.OK)
            self.gate.report(provider, ok, task=task.id, whole_attempt=True)
        outcome = _outcome(cut, result, files=stat.files)
        if left and cut is None and result.outcome is AgentOutcome.SUCCESS:
            outcome = TaskOutcome(
                state=TaskState.FAILED,
                reason=f"left work in submodule {paths_text(left)}, which no commit of "
                f"{task.branch} can hold; it was not kept (it was in the clone on node "
                f"{handle.node})",
            )
        failure = self._checked(live, handle, base) if outcome.state is TaskState.DONE else None
        self._retire(handle)
        return outcome if failure is None else failure

    def _node_leaks(
        self,
        actor: Any,  # noqa: ANN401 - a Ray actor handle
        task: Task,
        base: str,
        live: Live,
    ) -> list[Leak]:
        """The agent's own commits holding a secret of its node's environment, as it found them.

        Since the branch's last recorded tip (before it is recorded again): a value only the
        node holds is never known here. None when the node is lost meanwhile or its look failed
        there (a git error in its clone: told as a ``node_look_failed`` event); what it pushed
        is fetched and looked through here all the same, for this environment's secrets.
        """
        row = self.store.task(self.run_id, task.id)
        since = (row.tip_commit if row is not None else None) or base
        try:
            found = self._call(actor, "own_commits", since=since, base=base, live=live)
        except NodeLostError:
            return []
        except ClusterLostError:
            raise
        except SwarmError as exc:  # a failed look fails no attempt, nor keeps its work back
            reason = redact(one_line(str(exc), limit=300))
            self._emit("node_look_failed", task.id, {"reason": reason})
            return []
        return committed_secrets.handed_back(found)

    def _record_node_leaks(self, task: Task, found: list[Leak]) -> None:
        """Record those of *found* (:meth:`_node_leaks`, fetched now) not recorded yet."""
        for leak in committed_secrets.unrecorded(self.store, self.run_id, found):
            self._emit(committed_secrets.EVENT, task.id, committed_secrets.event_data(leak))

    def _stop_asked(self, live: Live) -> bool:
        """Whether the task is being stopped: by this coordinator, or asked in the store."""
        if live.stop.is_set():
            return True
        row = self.store.task(self.run_id, live.task.id)
        return row is not None and row.stop_requested

    def _checked(self, live: Live, handle: Handle, base: str) -> CheckFailure | None:
        """The attempt's checks; its node lost meanwhile, on a fresh clone of its pushed branch.

        The agent's work is done and pushed: only the checks run again, as after a lost
        coordinator, not the agent (its attempt stays as it ended).
        """
        try:
            return self._check(live, handle, base)
        except NodeLostError as exc:
            self._emit("node_lost", live.task.id, {"attempt": handle.number, "node": handle.node})
            self._retire(handle, silent=isinstance(exc, UnansweredError))
            attempt = next(
                a for a in self.store.attempts(self.run_id, live.task.id)
                if a.id == handle.attempt_id
            )  # fmt: skip
            self._state(
                live.task.id,
                TaskState.CHECKING,
                reason=f"node {handle.node} lost in its checks ({exc}); checking again elsewhere",
            )
            return self._recheck(live, base, attempt)

    def _report_planted(
        self, task: Task, handle: Handle, labels: list[str], switched: str | None
    ) -> None:
        """Git's own files of its clone the agent changed, or its HEAD it switched: blamed on it.

        The node put them back before its checkpoint; the run fails the task as it would for
        a write to the repository's own files, or an agent's switch of its worktree, here.
        """
        if labels or switched:
            where = f"(its clone on node {handle.node})"
            moved = f"its agent switched its worktree from {task.branch} to {switched} {where}"
            self.guard.report(
                Violation(
                    number=0,
                    where=task.id,
                    head=moved if switched else "",
                    git_files=tuple(f"{label} {where}" for label in labels),
                    suspects=(task.id,),
                    restored=True,
                )
            )

    def _record(
        self,
        handle: Handle,
        code: int | None,
        result: AgentResult,
        cut: tuple[TaskState, str] | None,
    ) -> None:
        outcome = cut[0].value if cut else attempt_outcome(result).value
        usage = attempt_usage(result, cut[1] if cut else result.reason)
        # Its end and its task's totals at once: a resumed coordinator counts it once.
        self.store.record_end(handle.attempt_id, exit_code=code, outcome=outcome, usage=usage)
        handle.counted = True

    def _end(self, handle: Handle, reason: str, *, silent: bool = False) -> None:
        """Record the attempt as failed and take its actor down (:meth:`_retire`)."""
        end_failed(self.store, handle, reason)
        self._retire(handle, silent=silent)


def end_failed(store: Store, handle: Handle, reason: str) -> None:
    """Record *handle*'s attempt as failed with *reason*, what its agent used counted with it.

    What it used (:attr:`Handle.used`) is added to its task's totals at once. One whose end
    is on record already (:attr:`Handle.counted`: lost in its checks, say) keeps it, its
    outcome and end time as they were: its task's state carries the later failure.
    """
    if handle.counted:
        return
    used = handle.used
    usage = AttemptUsage(reason=reason) if used is None else attempt_usage(used, reason)
    failed = AttemptOutcome.FAILED.value
    store.record_end(handle.attempt_id, exit_code=None, outcome=failed, usage=usage)
    handle.counted = True


def _outcome(cut: tuple[TaskState, str] | None, result: AgentResult, *, files: int) -> TaskOutcome:
    if cut is not None:
        return TaskOutcome(state=cut[0], reason=cut[1])
    if result.outcome is not AgentOutcome.SUCCESS:
        return TaskOutcome(state=TaskState.FAILED, reason=result.reason)
    if files == 0:
        return TaskOutcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
    return TaskOutcome(state=TaskState.DONE)
