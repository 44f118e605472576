"""Starting an attempt's agent, or adopting a previous manager's, until it is recorded.

A new attempt: its prompt written, a slot of its provider's gate taken (or why not), its
agent spawned (in the sandbox if asked) and watched. A previous manager's last attempt:
taken as recorded, or adopted and watched while its agent still runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from worktree_swarm.agents import (
    Adapter,
    AgentOutcome,
    AgentResult,
    adapter_for,
    claude_auth,
    provider_of,
)
from worktree_swarm.agents.base import prompt_argument
from worktree_swarm.core.models import AttemptOutcome, ProcessIdentity, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.guard import sandbox
from worktree_swarm.infra import faults, scrub, shim_record, shim_server, starts, supervisor
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.report import notes
from worktree_swarm.run import fallback
from worktree_swarm.run.agent_watch import AgentWatch, Ended, read_log
from worktree_swarm.run.course import Course, decided, past_max_wait, stated_limit
from worktree_swarm.run.gate_model import Limit, Signal
from worktree_swarm.run.run_worker import Live, worktree_path


class AttemptLaunch(AgentWatch):
    """Runs one attempt of a task, new or adopted (a task worker's part)."""

    _shims: shim_server.ShimServer  # made by TaskWorker: it forks the shim of every agent

    def _agent_env(
        self, adapter: Adapter, env: dict[str, str], task_id: str, config_dir: Path
    ) -> dict[str, str]:
        agent_env = adapter.env(base=env, task_id=task_id, config_dir=config_dir)
        if self.spec.sandbox:  # its copy of your Claude sign-in never reaches your home
            claude_auth.confine(config_dir)
        return agent_env

    def _attempt(
        self, live: Live, course: Course, path: Path, env: dict[str, str], number: int
    ) -> Ended | None:
        """Run one attempt with the course's agent.

        None when it never started: its provider went into a usage window while it waited
        and another agent can take over.
        """
        task = fallback.task_for(live.task, course.agent)
        session, prompt, not_before = course.session, course.prompt, course.not_before
        adapter = adapter_for(task.agent)
        logs = self._logs(task)
        logs.mkdir(parents=True, exist_ok=True)
        text = task.prompt + notes.findings_instructions(str(self._findings))
        if prompt is not None:
            # A resumed session already holds the task; a fresh agent (no session, or a CLI
            # without sessions) needs it again, then what to do now.
            resumes = session is not None and adapter.supports_resume
            # A hand-over already ends with the task (and the findings paragraph).
            whole = resumes or prompt.endswith(text)
            text = prompt = prompt if whole else f"{text}\n\n{prompt}"
        prompt_file = logs / f"prompt-{number}.md"
        faults.retry_while_full(
            lambda: prompt_file.write_text(text, encoding="utf-8"), self.store.on_full
        )
        values = {
            "prompt": prompt_argument(text, prompt_file),
            "prompt_file": str(prompt_file),
            "task_id": task.id,
            "worktree": str(path),
            "branch": task.branch,
        }
        # What to do now goes in as the prompt does: a long one (a repair's check output, the
        # task again for an agent without a session) as a pointer to the file that holds it.
        resume = None if prompt is None else prompt_argument(prompt, prompt_file)
        argv = adapter.argv(
            task.agent_argv, values=values, session_id=session, resume_prompt=resume
        )
        provider = provider_of(task.agent)
        refused = self._acquire(live, task, path, provider, not_before)
        if refused == "window":
            return None
        if refused:
            return self._not_started(task, provider, refused, number)
        cost: float | None = None
        box: sandbox.Confinement | None = None
        try:
            log_path = logs / f"attempt-{number}.log"
            if self.spec.sandbox:  # bubblewrap around the agent only (docs/sandbox.md)
                box = self._confinement(path, logs)
            agent = self._spawn(task, course, adapter, argv, env, path, log_path, number, box)
            self.guard.agent_started(task.id, agent.identity)
            started = {"pid": agent.identity.pid, "attempt": number, "agent": task.agent}
            attempt_id = self.store.record_attempt(
                self.run_id,
                task.id,
                number=number,
                identity=agent.identity,
                log_path=str(log_path),
                started_at=agent.started_at,
                agent=task.agent,
                event=("agent_started", started),
            )
            self._announce("agent_started", task.id, started)
            try:
                ended = self._watched(task, live, agent, agent.started_at, attempt_id)
            finally:
                self._agent_gone(task.id, logs)
                scrub.scrub_file(log_path)  # the agent is gone: nothing appends any more
            cost = self._record(attempt_id, task.id, ended, agent.poll(), ended_at=agent.ended_at())
            if ended.result.outcome is AgentOutcome.SUCCESS and ended.cut_short is None:
                # Shown before the agent's slot goes to the next task, so no more tasks
                # than `jobs` ever show `running` at once.
                self._checking(task)
        finally:
            self.gate.release(provider, cost_usd=cost)
            if box is not None:
                sandbox.release(box)
        return ended

    def _spawn(
        self,
        task: Task,
        course: Course,
        adapter: Adapter,
        argv: list[str],
        env: dict[str, str],
        path: Path,
        log_path: Path,
        number: int,
        box: sandbox.Confinement | None,
    ) -> supervisor.AgentProcess:
        """Start attempt *number*'s agent, a slot of its provider held.

        Your Claude sign-in is copied into its config dir only now (no wait is left before
        it starts), and taken out again if the agent does not start.
        """
        config_dir = log_path.parent / "agent-config"
        try:
            agent_env = self._agent_env(adapter, env, task.id, config_dir)
            if box is not None:
                argv, agent_env = sandbox.confine(argv, agent_env, box)
            # The intent first, with the task's state and its repair round counted (one
            # transaction): `swarm resume` finds an agent started but not recorded.
            intent = self._repair_charged(task, course)
            intent["launching"], intent["launching_agent"] = number, task.agent
            self._running(task.id, number, **intent)
            return supervisor.spawn(
                argv,
                cwd=path,
                env=agent_env,
                log_path=log_path,
                grace=self.spec.kill_grace,
                shims=self._shims,
            )
        except BaseException:
            claude_auth.release(config_dir, confined=self.spec.sandbox)
            raise

    def _agent_gone(self, task_id: str, logs: Path) -> None:
        """After an attempt's agent ended: the guard is told, its copy of your sign-in goes."""
        self.guard.agent_ended(task_id)
        claude_auth.release(logs / "agent-config", confined=self.spec.sandbox)

    def _not_started(self, task: Task, provider: str, refused: str, number: int) -> Ended:
        """How an attempt the gate refused ends the task."""
        failed = AgentResult(outcome=AgentOutcome.FAILED)
        if refused == "max_wait":  # a usage window reported meanwhile, by any task
            reset = self.gate.window_until(provider) or time.time()
            why = past_max_wait(task, provider, reset)
            return Ended(result=failed, cut_short=TaskState.FAILED, reason=why)
        spent = f"${self.gate.spent_usd:.2f} of ${self.gate.max_cost_usd or 0:.2f}"
        why = f"budget reached ({spent})" if refused == "budget" else "stopped"
        return Ended(
            result=failed,
            cut_short=TaskState.STOPPED,
            reason=f"{why} before attempt {number} started",
        )

    def _acquire(
        self, live: Live, task: Task, path: Path, provider: str, not_before: float
    ) -> str | None:
        """A slot of *provider*'s gate for *task*; why not ("window", "budget", ...) or None."""
        leave = fallback.next_agent(live.task, task.agent, self.gate) is not None
        refused = self.gate.try_acquire(
            provider,
            live.stop,
            not_before=not_before,
            leave_on_window=leave,
            max_wait=task.max_wait,
            rank=live.rank,
        )
        if refused is not None:
            return refused

        def acquire() -> str:
            return self.gate.acquire(
                provider,
                live.stop,
                not_before=not_before,
                leave_on_window=leave,
                max_wait=task.max_wait,
                rank=live.rank,
            )

        if self.gate.waiting_until(provider, not_before=not_before):
            live.waiting = True
            try:
                with self.guard.idle(task.id, path):  # a long wait: its worktree is watched
                    return acquire()
            finally:
                live.waiting = False
        return acquire()

    def _resume_attempt(self, live: Live, attempt: AttemptRow, profile: str) -> Ended:
        """Pick up the last attempt of a previous manager.

        An attempt still open is adopted: watched until its process (if still alive) ends,
        then read from its log. A finished one is taken as it was recorded; a rate-limited one
        whose wait was never decided (its manager killed first) has its limit read again.
        """
        if attempt.ended_at is not None:
            recorded = AttemptOutcome.parse(attempt.outcome)
            outcome = {
                AttemptOutcome.RATE_LIMITED: AgentOutcome.RATE_LIMITED,
                AttemptOutcome.SUCCEEDED: AgentOutcome.SUCCESS,
            }.get(recorded, AgentOutcome.FAILED)
            if recorded in {AttemptOutcome.STOPPED, AttemptOutcome.TIMED_OUT}:
                # Cut short by `swarm stop` or its timeout: it ends so, checkpointed first.
                failed = AgentResult(outcome=outcome, reason=attempt.reason)
                cut = TaskState(recorded.value)
                return Ended(result=failed, cut_short=cut, reason=attempt.reason)
            if recorded is AttemptOutcome.DISK_FULL:  # tried again once there is room
                failed = AgentResult(outcome=outcome, reason=attempt.reason)
                return Ended(result=failed, disk_full=True, reason=attempt.reason)
            retry_at, window = attempt.retry_at, attempt.usage_window
            if not decided(attempt):  # its limit as the agent said it, read again
                text = read_log(Path(attempt.log_path))
                retry_at, window = stated_limit(attempt, profile, text)
            result = AgentResult(
                outcome=outcome,
                reason=attempt.reason,
                session_id=attempt.session_id,
                retry_at=retry_at,  # the wait it was in: resuming does not restart it
            )
            if window:  # a fresh gate learns the window again, as it was told:
                # a claim, no new throttle; and a window near its end is no throttle either,
                # which would hold every task of the provider until then.
                told = Limit(signal=Signal.WINDOW, retry_at=retry_at, detail="usage limit")
                self.gate.report(provider_of(profile), told, task=live.task.id, recalled=True)
            # A throttle's recorded wait is the task's own backoff, however far: not a window.
            return Ended(result=result, usage_window=window)
        identity = ProcessIdentity(
            pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid
        )
        log_path = Path(attempt.log_path)
        agent = supervisor.adopt(
            identity,
            log_path=log_path,
            started_at=attempt.started_at,
            workdir=worktree_path(self.spec, live.task),
        )
        # Gone already and nothing wrote its end down (the machine went down with it): it
        # ended no later than... its last sign of life, not when this manager noticed.
        gone_since = None if agent.alive() else time.time() - agent.idle_seconds()
        self._state(live.task.id, TaskState.RUNNING, reason="")
        task = fallback.task_for(live.task, profile)
        self.gate.adopt(provider_of(profile))
        live.adopted.set()
        if gone_since is None:  # one that ended unwatched never wrote since: no suspect now
            self.guard.agent_started(live.task.id, identity)
        # Its timeout counts from its start as the kernel has it: the wall clock may have
        # stepped while no manager ran (the record's start is a wall-clock time).
        ran = None if gone_since is not None else starts.age(identity.pid)
        started_at = attempt.started_at if ran is None else time.time() - ran
        cost: float | None = None
        try:
            try:
                ended = self._watched(
                    task, live, agent, started_at, attempt.id, gone_since=gone_since
                )
            finally:
                self._agent_gone(live.task.id, log_path.parent)
            # What the shim saw, when the agent ended while no manager watched it.
            shim = shim_record.read_record(shim_record.record_path(log_path))
            # A shim gone with its agent (a reboot) never wrote an end: its last sign of life.
            code = None if shim is None else shim.exit_code
            end = gone_since if shim is None or shim.ended_at is None else shim.ended_at
            cost = self._record(attempt.id, live.task.id, ended, code, ended_at=end)
        finally:
            self.gate.release(provider_of(profile), cost_usd=cost)
            if self.spec.sandbox:
                path = worktree_path(self.spec, live.task)
                sandbox.release(self._confinement(path, self._logs(live.task)))
        return ended

    def _checking(self, task: Task) -> bool:
        """Show *task* as checking (once) if it has checks to run; whether it has."""
        if not (task.checks or task.expect_files or task.no_placeholders):
            return False
        row = self.store.task(self.run_id, task.id)
        if row is None or row.state is not TaskState.CHECKING:
            self._state(task.id, TaskState.CHECKING)
        return True

    def _confinement(self, worktree: Path, logs: Path) -> sandbox.Confinement:
        return sandbox.Confinement(
            worktree=worktree,
            common_dir=self.repo.common_dir,
            state_dir=self.repo.state_dir,
            task_dir=logs,
            config_dir=logs / "agent-config",  # as passed to adapter.env above
            temp_dir=logs / "tmp",
            findings=self._findings,
            extra=self.spec.sandbox_writable,
        )
