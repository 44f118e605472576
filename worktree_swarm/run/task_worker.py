"""One task's pipeline, run in its own thread: worktree, setup, attempts, checkpoints, checks.

Every attempt ends with a checkpoint commit, so whatever happens next (a rate limit, a
timeout, a stop, the manager dying) the agent's edits are on the task's branch. A rate-limited
attempt is resumed in the same worktree (and the same session where the agent supports it);
failing checks can be handed back to the agent (`repair`).

TaskWorker is made of parts beside it: `attempt_launch` (one attempt, new or adopted),
`agent_watch` (its agent to its end), `checkpoint` (what the attempt left) and
`agent_switch` (which agent goes on); `run_worker` is what the Ray executor shares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from worktree_swarm.agents import AgentOutcome, adapter_for
from worktree_swarm.core.models import ProcessIdentity, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.git import (
    diffs,
    gitconfig,
    gitfiles,
    local_files,
    sparse,
    status,
    tampering,
    worktrees,
)
from worktree_swarm.git import repo as git
from worktree_swarm.infra import (
    faults,
    proc_scan,
    proctree,
    scrub,
    shim_record,
    shim_server,
    starts,
)
from worktree_swarm.infra.disk import DiskUsage
from worktree_swarm.infra.proc import task_env
from worktree_swarm.infra.store_rows import AttemptRow, TaskRow
from worktree_swarm.run import provision
from worktree_swarm.run.agent_switch import AgentSwitch
from worktree_swarm.run.agent_watch import POLL_SECONDS, Ended, read_log
from worktree_swarm.run.attempt_launch import AttemptLaunch
from worktree_swarm.run.checkpoint import Checkpoints
from worktree_swarm.run.checks import CheckFailure, run_checks, run_steps
from worktree_swarm.run.course import Course, decided
from worktree_swarm.run.disk_budget import DiskBudget
from worktree_swarm.run.retry import in_the_way
from worktree_swarm.run.run_worker import Live, RunContext, TaskOutcome, check_failed, worktree_path

ROOM_POLL_SECONDS = 1.0  # a look for room on a full disk, where no pause waits for it


class TaskWorker(AgentSwitch, Checkpoints, AttemptLaunch):
    """Runs tasks of one run; shared by all worker threads (state lives in arguments)."""

    def __init__(self, run: RunContext, *, disk: DiskBudget) -> None:
        super().__init__(run)
        self.disk = disk
        self._check_slots = threading.Semaphore(run.spec.jobs)
        # Forks the shim of every agent: no interpreter start per attempt.
        self._shims = shim_server.ShimServer()

    def close(self) -> None:
        """End the shim server (the shims it forked, and their agents, carry on)."""
        self._shims.close()

    def run(self, live: Live) -> TaskOutcome:
        """Take *live*'s task from wherever it is to a final outcome."""
        path = worktree_path(self.spec, live.task)
        # Everything in the worktree and on the branch is the task's own until it ends;
        # from then on the guard watches both for writes by anyone else.
        with self.guard.busy(live.task.id, path):
            try:
                outcome = self._run(live, path)
            except BaseException:
                self.disk.record(live.task.id, self._pipeline_ended(live.task, path))
                raise
            # Recorded with its final state, in the run loop's transaction.
            return dataclasses.replace(outcome, disk=self._pipeline_ended(live.task, path))

    def _pipeline_ended(self, task: Task, path: Path) -> DiskUsage | None:
        """*task*'s links taken out of its worktree; what the worktree uses then."""
        # Before the guard's baseline: the links are not part of the worktree.
        local_files.unlink_links(self.repo.root, path, task.link)
        return self.disk.measure(task.id)

    def _run(self, live: Live, path: Path) -> TaskOutcome:
        task = live.task
        row = self.store.task(self.run_id, task.id)
        if row is not None and row.base_commit:
            # Populated before (a resumed or retried task): the worktree is ours; put back
            # what a crash or a removal took, never start it over.
            base = row.base_commit
            if live.resume_from is None or live.resume_from.ended_at is not None:
                live.resume_from = self._unrecorded(task, path, row) or live.resume_from
            unlock = not _agent_may_run(live.resume_from)
            self._kill_leftover_steps(task, path)
            with self.guard.provisioning(path):
                provision.restore(
                    self.repo,
                    path=path,
                    branch=task.branch,
                    start=base,
                    unlock=unlock,
                    cone=sparse.of_task(task),
                    agent_ran=row.agent_started,
                )
        else:
            # A start commit recorded by an earlier manager is kept: a dependency merge made
            # again would be a different commit, and the half-made branch points at the old one.
            recorded = row.start_commit if row is not None else None
            start = recorded or self._start_commit(task)
            if isinstance(start, TaskOutcome):
                return start
            if not self.disk.admit(task, start=start, stop=live.stop, waiting=self._waiting(live)):
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped while waiting for disk")
            try:
                self._make_worktree(task, path, start, recorded=bool(recorded))
            except worktrees.InTheWayError as exc:
                # Found there, not made: no intent is left to take it for the task's own (a
                # resume's roll-back, `swarm clean`, `swarm merge`, `swarm status`).
                self.store.update_task(self.run_id, task.id, start_commit=None)
                reason = in_the_way(self.store, self.run_id, task.id, exc)
                return TaskOutcome(state=TaskState.FAILED, reason=reason)
            self.store.update_task(self.run_id, task.id, base_commit=start)
            base = start
        env = self._env(task, path, base, live.port_slot or 0)
        if live.resume_from is None:
            # A full disk pauses them as the checkout above (a copy is made whole or not at all).
            faults.retry_while_full(
                lambda: local_files.copy_into(
                    self.repo.root, path, task.copy, mode=self.spec.copy_mode
                ),
                self.store.on_full,
            )
            faults.retry_while_full(
                lambda: local_files.link_into(self.repo.root, path, task.link), self.store.on_full
            )
            if task.setup:  # it may take minutes: tasks set up meanwhile need not wait for it
                self.gate.forget(live.rank)
            with self._own_steps(task.id) as started:
                failure = run_steps(
                    task.setup,
                    cwd=path,
                    env=env,
                    log=self._logs(task) / "setup.log",
                    what="setup",
                    timeout=task.setup_timeout,
                    stop=live.stop,
                    grace=self.spec.kill_grace,
                    on_start=started,
                    max_log=self.spec.max_log,
                )
            scrub.scrub_file(self._logs(task) / "setup.log")
            if failure is not None:
                return check_failed(failure)
        return self._attempts(live, path, base, env)

    def _make_worktree(self, task: Task, path: Path, start: str, *, recorded: bool) -> None:
        """Make *task*'s branch and worktree at *start*, its intent recorded first.

        *recorded*: a killed manager recorded it; what that one half-made is rolled back.
        InTheWayError, with nothing made, when its branch or path is someone else's.
        """
        if recorded:
            with self.guard.provisioning(path):  # swarm's own removal
                provision.roll_back(self.repo, path=path, branch=task.branch, start=start)
        else:  # the intent first: a crash from here on is rolled back by `swarm resume`
            # Yours at its path is never taken for the task's; a branch of yours, git refuses
            # atomically as it makes the branch (no git run for it here), and the intent goes.
            worktrees.check_path_free(path)
            self.store.update_task(self.run_id, task.id, start_commit=start)
        with self.guard.provisioning(path):
            faults.retry_while_full(  # a failed creation removes what it made: retry is clean
                lambda: worktrees.create_worktree(
                    self.repo, path=path, branch=task.branch, start=start, cone=sparse.of_task(task)
                ),
                self.store.on_full,
            )

    def _unrecorded(self, task: Task, path: Path, row: TaskRow) -> AttemptRow | None:
        """Record the attempt a killed manager launched but did not record, if it did.

        Its agent still running is adopted; one that ended while no manager watched is read
        from its log. Without either, the launch never happened and the attempt runs anew.
        The agent is the one launched (a fallback's, maybe); the task's own when not on record.
        """
        number = row.launching
        recorded = {a.number for a in self.store.attempts(self.run_id, task.id)}
        if number is None or number in recorded:
            return None
        identity = provision.unrecorded_agent(self.run_id, task.id, path)
        # The log the killed manager opened for it: the name follows the attempt number.
        log_path = self._logs(task) / f"attempt-{number}.log"
        text = read_log(log_path)
        # The shim writes its record before it starts the agent: proof of a launch, even of
        # an agent that printed nothing, or one whose working directory left the worktree.
        record = shim_record.record_path(log_path)
        shim = shim_record.read_record(record)
        if identity is None and shim is not None and proctree.shim_alive(record):
            identity = proctree.identity_of(shim.shim_pid)
        if identity is None and shim is None and not text.strip():
            self.store.update_task(self.run_id, task.id, launching=None)
            return None
        agent = row.launching_agent or task.agent
        adopted = {"attempt": number, "alive": identity is not None}
        # With its task's count and its event (one transaction); an agent that is gone is
        # read below: a manager killed before then finds the attempt open, and adopts it.
        attempt_id = self.store.record_attempt(
            self.run_id,
            task.id,
            number=number,
            # An agent that is gone has no identity left; pid 0 names no process to adopt.
            identity=identity or ProcessIdentity(pid=0, create_time=0.0, pgid=0),
            log_path=str(log_path),
            started_at=(
                starts.as_wall(identity.create_time)
                if identity
                else shim.started_at
                if shim
                else log_path.stat().st_mtime
            ),
            agent=agent,
            event=("agent_adopted", adopted),
        )
        if identity is None:
            code = None if shim is None else shim.exit_code
            adapter = adapter_for(agent)
            result = adapter.interpret(exit_code=code, log_text=text, now=time.time())
            ended_at = None if shim is None else shim.ended_at
            cost = self._record(attempt_id, task.id, Ended(result=result), code, ended_at=ended_at)
            self.gate.count_spent(cost or 0.0)  # after the resumed run counted what it had spent
        self._announce("agent_adopted", task.id, adopted)
        return self.store.attempts(self.run_id, task.id)[-1]

    # -- attempts -------------------------------------------------------------------------

    def _attempts(self, live: Live, path: Path, base: str, env: dict[str, str]) -> TaskOutcome:
        task = live.task
        previous = self.store.attempts(self.run_id, task.id)
        number = len(previous)
        course = self._course(task, previous)
        # The work so far (retried, resumed with no attempt to replay): the next limited
        # attempt's is judged by what it adds, not by the branch's whole diff. An attempt
        # replayed is judged by all it holds, its own work included.
        seed = previous and live.resume_from is None
        if seed and (tip := git.rev_parse(self.repo, task.branch)) is not None:
            course.progressed(diffs.diff_stat(self.repo, base, tip))
        while True:
            replayed = live.resume_from is not None and live.resume_from.ended_at is not None
            # Counted in the course already: a replayed attempt whose wait was decided.
            counted = replayed and live.resume_from is not None and decided(live.resume_from)
            step = self._next(live, course, path, base, env, number)
            if step is None:  # its provider went into a usage window while it waited
                continue
            number, ended = step
            course.session = ended.result.session_id or course.session
            stat, cut = self._after_attempt(
                task, path, base, number, ended, agent=course.agent, ran=course.ran
            )
            if cut is not None:
                return cut
            result = ended.result
            progressed = course.progressed(stat)
            if result.outcome is AgentOutcome.RATE_LIMITED:
                out = self._rate_limited(
                    task,
                    path,
                    base,
                    number,
                    course,
                    result,
                    replayed=counted,
                    progressed=progressed,
                    window=ended.usage_window,
                    kept=stat.files > 0,
                )
                if out is not None:
                    return out
                continue
            if ended.disk_full and self._goes_on_with_room(live, path, course, replayed=replayed):
                continue
            if result.outcome is AgentOutcome.FAILED:
                return TaskOutcome(state=TaskState.FAILED, reason=result.reason)
            out = self._completed_attempt(live, path, base, env, course, stat)
            if out is not None:
                return out

    def _completed_attempt(
        self,
        live: Live,
        path: Path,
        base: str,
        env: dict[str, str],
        course: Course,
        stat: diffs.DiffStat,
    ) -> TaskOutcome | None:
        """After an attempt that ran to its end: the task's outcome, or None for a repair."""
        self._completed(live.task.id, course)
        if stat.files == 0:
            return TaskOutcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
        failure = self._check(live, path, base, env)
        if failure is not None and failure.final:
            return check_failed(failure)
        if failure is None:
            return TaskOutcome(state=TaskState.DONE)
        return self._repair(live.task, course, failure)

    def _goes_on_with_room(self, live: Live, path: Path, course: Course, *, replayed: bool) -> bool:
        """After an attempt that failed on a full disk: whether another follows once there is room.

        The room is waited for here; with the task's tries on a full disk spent, it fails.
        *replayed*: the attempt was a previous manager's, already counted in the course.
        """
        spent = course.disk_retries_left < 0 if replayed else course.disk_retries_left <= 0
        if spent:
            return False
        course.disk_retries_left -= 0 if replayed else 1
        self._wait_for_room(live.task, path, live)
        course.out_of_room()
        return True

    def _wait_for_room(self, task: Task, path: Path, live: Live) -> None:
        """Wait, paused as a full disk pauses the run, until there is room for another attempt.

        A stop (`swarm stop`, Ctrl-C) ends the wait: the next attempt is then not started.
        """
        self._state(
            task.id,
            TaskState.PENDING,
            reason="its agent failed while the disk was full; it goes on once there is room",
        )
        full, pause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.store.on_full
        waited = False
        with self.guard.idle(task.id, path):  # a long wait: its worktree is watched
            while self._out_of_room(task, path, to_go_on=True) and not live.stop.is_set():
                waited = True
                if pause is None:
                    live.stop.wait(ROOM_POLL_SECONDS)
                else:  # `swarm status` says the run is paused, and why
                    pause(full)
        if waited and pause is not None:
            pause(None)

    def _next(
        self, live: Live, course: Course, path: Path, base: str, env: dict[str, str], number: int
    ) -> tuple[int, Ended] | None:
        """The next attempt (a previous manager's, adopted, or a new one) and its number."""
        if live.resume_from is not None:
            self.gate.forget(live.rank)  # an attempt of a previous manager's: not a new slot
            resumed, live.resume_from = live.resume_from, None
            return resumed.number, self._resume_attempt(live, resumed, course.agent)
        self._maybe_switch(live.task, path, base, course, started=number > 0)
        ended = self._attempt(live, course, path, env, number + 1)
        return None if ended is None else (number + 1, ended)

    def _check(self, live: Live, path: Path, base: str, env: dict[str, str]) -> CheckFailure | None:
        task = live.task
        if not self._checking(task):
            return None
        while not self._check_slots.acquire(timeout=POLL_SECONDS):
            if live.stop.is_set():
                return CheckFailure(summary="stopped while waiting to run checks", stopped=True)
        tip = gitfiles.head_in(path) or base
        before = status.untracked_files(path)
        try:
            # No agent of the task runs while its checks do: its branch is swarm's alone.
            with self.guard.pinned(task.id, task.branch, tip):
                with self._own_steps(task.id) as started:
                    failure = run_checks(
                        task,
                        worktree=path,
                        base=base,
                        env=env,
                        log=self._logs(task) / "checks.log",
                        stop=live.stop,
                        grace=self.spec.kill_grace,
                        on_start=started,
                        max_log=self.spec.max_log,
                    )
                # Checks run code the agent wrote: their worktree is looked at again before
                # swarm runs git there, as after an attempt.
                if (changed := tampering.tampered(self.repo, path)) is not None:
                    why = f"its checks left its worktree no longer swarm's: {changed}"
                    return CheckFailure(summary=why, final=True)
                planted = tampering.unplant(self.repo, path, task.branch)
                moved = self.guard.checks_moved(task.id, path, task.branch, tip)
            # What they wrote (a formatter's edits, build output) goes: the branch is what
            # was checked, and no later checkpoint commits it.
            status.remove_new(path, status.untracked_files(path) - before)
            if moved is None:
                faults.retry_while_full(  # the index rewritten: on a full disk, it waits
                    lambda: status.reset_hard(path),
                    self.store.on_full,
                )
            if planted:
                moved = f"its checks planted links where git writes ({', '.join(planted)}); removed"
            if moved is None:
                return failure
            return CheckFailure(
                summary=moved, final=True, stopped=bool(failure and failure.stopped)
            )
        finally:
            self._check_slots.release()
            scrub.scrub_file(self._logs(task) / "checks.log")

    @contextlib.contextmanager
    def _own_steps(self, task_id: str) -> Iterator[Callable[[ProcessIdentity], None]]:
        """Inside, *task_id*'s setup or check steps count as its agent to the guard.

        What they write outside is theirs: the guard blamed the agents running meanwhile.
        """

        def started(identity: ProcessIdentity) -> None:
            self.guard.agent_ended(task_id)  # the step before, if any
            self.guard.agent_started(task_id, identity)

        try:
            yield started
        finally:
            self.guard.agent_ended(task_id)

    def _kill_leftover_steps(self, task: Task, path: Path) -> None:
        """Kill setup steps and checks a dead manager left running, before they run again.

        Their shims live in sessions of their own, so a kill of the manager's process group
        leaves them; two checks at once in one worktree would trip over each other. A shim
        killed too left its group: what works in the worktree *path* in its session is its.
        """
        proc_scan.kill_left_in(
            self._logs(task),
            grace=self.spec.kill_grace,
            within=(path,),
            only=lambda record: record.name.startswith(("setup-", "checks-")),
        )

    # -- helpers --------------------------------------------------------------------------

    def _waiting(self, live: Live) -> Callable[[str], None]:
        """Show why *live*'s task waits for disk; no slot is held for it meanwhile."""

        def waiting(reason: str) -> None:
            if reason:
                self.gate.forget(live.rank)
            self._state(live.task.id, TaskState.PENDING, reason=reason)

        return waiting

    def _gitconfig(self, task: Task) -> Path:
        """A task's own global git config: the user's identity and ignore file, nothing else.

        In a sparse worktree also sparse checkout, so that the agent's git sees the work it
        does outside the cone as swarm's does.
        """
        path = self._logs(task) / "gitconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        items = self._git_identity
        if sparse.of_task(task) is not None:
            items = {**items, **dict(sparse.SETTINGS)}
        gitconfig.write_config_file(path, items)
        return path

    def _env(self, task: Task, path: Path, base: str, slot: int) -> dict[str, str]:
        port = self.spec.port_base + slot * self.spec.port_block
        return task_env(
            {
                # git inside the worktree reaches that worktree only, whatever HOME holds; from
                # anywhere else under the worktree root no repository at all (git never looks
                # up into a ceiling directory), not even one your repository's directory is in.
                "GIT_CEILING_DIRECTORIES": str(path.parent.parent),
                "GIT_CONFIG_GLOBAL": str(self._gitconfig(task)),
                "SWARM_RUN_ID": self.run_id,
                "SWARM_TASK_ID": task.id,
                "SWARM_WORKTREE": str(path),
                "SWARM_BRANCH": task.branch,
                "SWARM_BASE": base,
                "SWARM_PORT": str(port),
                "SWARM_CONTEXT": str(self._findings),
                **dict(task.env),
            }
        )


def _agent_may_run(attempt: AttemptRow | None) -> bool:
    """Whether an adopted attempt's agent may still run (and hold git's locks itself)."""
    if attempt is None or attempt.ended_at is not None:
        return False
    identity = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    return proctree.is_alive(identity)
