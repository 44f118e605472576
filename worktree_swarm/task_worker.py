"""One task's pipeline, run in its own thread: worktree, setup, attempts, checkpoints, checks.

Every attempt ends with a checkpoint commit, so whatever happens next (a rate limit, a
timeout, a stop, the manager dying) the agent's edits are on the task's branch. A rate-limited
attempt is resumed in the same worktree (and the same session where the agent supports it);
failing checks can be handed back to the agent (`repair`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm import git, notes, sandbox, supervisor, worktrees
from worktree_swarm.agents import AgentResult, adapter_for
from worktree_swarm.agents import Outcome as AgentOutcome
from worktree_swarm.checks import CheckFailure, run_checks, run_steps
from worktree_swarm.disk_budget import DiskBudget
from worktree_swarm.governor import AgentGate
from worktree_swarm.guard import Guard
from worktree_swarm.models import ProcessIdentity, RunSpec, Task, TaskState
from worktree_swarm.proc import clean_env
from worktree_swarm.store import AttemptRow, AttemptUsage, Store

# Popen.wait polls with its own backoff capped at 50 ms, so exits are seen within 50 ms
# whatever this is; a longer slice only means fewer wake-ups for stop and timeout checks.
POLL_SECONDS = 0.25
LOG_READ_LIMIT = 8 * 2**20
RESUME_PROMPT = (
    "You were interrupted (rate limit or restart). Continue the task where you left off; "
    "your earlier edits are already in this worktree."
)

Emit = Callable[[str, str | None, Mapping[str, object]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a worker reports back for one task."""

    state: TaskState
    reason: str = ""


@dataclass(slots=True, kw_only=True)
class Live:
    """A task in flight: its stop event and the port block it owns."""

    task: Task
    port_slot: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    resume_from: AttemptRow | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ended:
    """How one attempt ended: the adapter's reading, or the state that cut it short."""

    result: AgentResult
    cut_short: TaskState | None = None
    reason: str = ""


class TaskWorker:
    """Runs tasks of one run; shared by all worker threads (state lives in arguments)."""

    def __init__(
        self,
        *,
        repo: git.Repo,
        spec: RunSpec,
        store: Store,
        run_id: str,
        base_commit: str,
        gate: AgentGate,
        guard: Guard,
        emit: Emit,
        logs_root: Path,
        disk: DiskBudget,
    ) -> None:
        self.repo = repo
        self.disk = disk
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.base_commit = base_commit
        self.gate = gate
        self.guard = guard
        self._emit = emit
        self._logs_root = logs_root
        self._tasks = {t.id: t for t in spec.tasks}
        self._check_slots = threading.Semaphore(spec.jobs)
        self._findings = logs_root / notes.FILE_NAME
        self._git_identity = _git_identity(repo.root)

    def run(self, live: Live) -> Outcome:
        """Take *live*'s task from wherever it is to a final outcome."""
        path = worktree_path(self.spec, live.task)
        # Everything in the worktree and on the branch is the task's own until it ends;
        # from then on the guard watches both for writes by anyone else.
        with self.guard.busy(live.task.id, path):
            try:
                return self._run(live, path)
            finally:  # before the guard's baseline: the links are not part of the worktree
                worktrees.unlink_links(self.repo.root, path, live.task.link)
                self.disk.record(live.task.id)

    def _run(self, live: Live, path: Path) -> Outcome:
        task = live.task
        row = self.store.task(self.run_id, task.id)
        if row is not None and row.base_commit and path.is_dir():
            base = row.base_commit  # resumed after the manager died: the worktree is ours
        else:
            start = self._start_commit(task)
            if isinstance(start, Outcome):
                return start
            if not self.disk.admit(task, start=start, stop=live.stop, waiting=self._waiting(task)):
                return Outcome(state=TaskState.STOPPED, reason="stopped while waiting for disk")
            worktrees.create_worktree(self.repo, path=path, branch=task.branch, start=start)
            self.store.update_task(self.run_id, task.id, base_commit=start)
            base = start
        env = self._env(task, path, base, live.port_slot)
        if live.resume_from is None:
            if task.copy:
                worktrees.copy_into(self.repo.root, path, task.copy, mode=self.spec.copy_mode)
            worktrees.link_into(self.repo.root, path, task.link)
            failure = run_steps(
                task.setup,
                cwd=path,
                env=env,
                log=self._logs(task) / "setup.log",
                what="setup",
                timeout=task.setup_timeout,
                stop=live.stop,
                grace=self.spec.kill_grace,
            )
            if failure is not None:
                return _failed(failure)
        return self._attempts(live, path, base, env)

    # -- attempts -------------------------------------------------------------------------

    def _attempts(self, live: Live, path: Path, base: str, env: dict[str, str]) -> Outcome:
        task = live.task
        previous = self.store.attempts(self.run_id, task.id)
        number = len(previous)
        session = next((a.session_id for a in reversed(previous) if a.session_id), None)
        retries_left = task.retries - sum(
            a.outcome == TaskState.RATE_LIMITED.value for a in previous
        )
        repairs_left = task.repair
        streak = 0
        prompt: str | None = RESUME_PROMPT if previous else None
        while True:
            if live.resume_from is not None:
                number = live.resume_from.number
                ended = self._resume_attempt(live, live.resume_from)
                live.resume_from = None
            else:
                number += 1
                ended = self._attempt(live, path, env, number, session, prompt)
            session = ended.result.session_id or session
            stat, cut = self._after_attempt(task, path, base, number, ended)
            if cut is not None:
                return cut
            result = ended.result
            if result.outcome is AgentOutcome.RATE_LIMITED:
                streak += 1
                if retries_left <= 0:
                    return Outcome(
                        state=TaskState.FAILED,
                        reason=f"rate limited and out of retries ({result.reason}); "
                        f"work kept on {task.branch}",
                    )
                retries_left -= 1
                until = self.gate.rate_limited(retry_at=result.retry_at, streak=streak)
                when = time.strftime("%H:%M:%S", time.localtime(until))
                self._state(task.id, TaskState.RATE_LIMITED, reason=f"resuming after {when}")
                prompt = RESUME_PROMPT
                continue
            if result.outcome is AgentOutcome.FAILED:
                return Outcome(state=TaskState.FAILED, reason=result.reason)
            streak = 0
            self.gate.succeeded()
            if stat.files == 0:
                return Outcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
            failure = self._check(live, path, base, env)
            if failure is None:
                return Outcome(state=TaskState.DONE)
            if failure.stopped or repairs_left <= 0:
                return _failed(failure)
            repairs_left -= 1
            prompt = repair_prompt(failure)

    def _after_attempt(
        self, task: Task, path: Path, base: str, number: int, ended: _Ended
    ) -> tuple[git.DiffStat, Outcome | None]:
        """Guard checks and the checkpoint; an outcome when the attempt ends the task."""
        switched = self.guard.own_head(task.id, path, task.branch)
        stat = self._checkpoint(task, path, base, number, ended)
        if switched is not None:
            return stat, Outcome(state=TaskState.FAILED, reason=switched.reason(task.id))
        if ended.cut_short is not None:
            return stat, Outcome(state=ended.cut_short, reason=ended.reason)
        return stat, None

    def _checkpoint(
        self, task: Task, path: Path, base: str, number: int, ended: _Ended
    ) -> git.DiffStat:
        """Commit the attempt's edits to the task's branch and record the diff stat."""
        tip = git.checkpoint(
            path,
            message=f"swarm: checkpoint {task.id} attempt {number} "
            f"({ended.cut_short or ended.result.outcome})",
            author=self.spec.commit_author,
            exclude=task.link,
        )
        stat = git.diff_stat(self.repo, base, tip or git.rev_parse_in(path, "HEAD") or base)
        self.store.update_task(
            self.run_id,
            task.id,
            diff_files=stat.files,
            diff_insertions=stat.insertions,
            diff_deletions=stat.deletions,
        )
        return stat

    def _check(self, live: Live, path: Path, base: str, env: dict[str, str]) -> CheckFailure | None:
        task = live.task
        if not (task.checks or task.expect_files or task.no_placeholders):
            return None
        self._state(task.id, TaskState.CHECKING)
        while not self._check_slots.acquire(timeout=POLL_SECONDS):
            if live.stop.is_set():
                return CheckFailure(summary="stopped while waiting to run checks", stopped=True)
        try:
            return run_checks(
                task,
                worktree=path,
                base=base,
                env=env,
                log=self._logs(task) / "checks.log",
                stop=live.stop,
                grace=self.spec.kill_grace,
            )
        finally:
            self._check_slots.release()

    def _attempt(
        self,
        live: Live,
        path: Path,
        env: dict[str, str],
        number: int,
        session: str | None,
        prompt: str | None,
    ) -> _Ended:
        task = live.task
        adapter = adapter_for(task.agent)
        logs = self._logs(task)
        logs.mkdir(parents=True, exist_ok=True)
        text = prompt or task.prompt + notes.findings_instructions(str(self._findings))
        prompt_file = logs / f"prompt-{number}.md"
        prompt_file.write_text(text, encoding="utf-8")
        values = {
            "prompt": text,
            "prompt_file": str(prompt_file),
            "task_id": task.id,
            "worktree": str(path),
            "branch": task.branch,
        }
        argv = adapter.argv(
            task.agent_argv, values=values, session_id=session, resume_prompt=prompt
        )
        agent_env = adapter.env(base=env, task_id=task.id, config_dir=logs / "agent-config")
        refused = self.gate.try_acquire(live.stop)
        if refused is None and self.gate.paused:  # a long wait: its worktree is watched
            with self.guard.idle(task.id, path):
                refused = self.gate.acquire(live.stop)
        elif refused is None:
            refused = self.gate.acquire(live.stop)
        if refused:
            spent = f"${self.gate.spent_usd:.2f} of ${self.gate.max_cost_usd or 0:.2f}"
            why = f"budget reached ({spent})" if refused == "budget" else "stopped"
            return _Ended(
                result=AgentResult(outcome=AgentOutcome.FAILED),
                cut_short=TaskState.STOPPED,
                reason=f"{why} before attempt {number} started",
            )
        cost: float | None = None
        box: sandbox.Confinement | None = None
        try:
            self._state(task.id, TaskState.RUNNING, started_at=time.time())
            log_path = logs / f"attempt-{number}.log"
            if self.spec.sandbox:  # bubblewrap around the agent only (docs/sandbox.md)
                box = self._confinement(path, logs)
                argv, agent_env = sandbox.confine(argv, agent_env, box)
            agent = supervisor.spawn(
                argv, cwd=path, env=agent_env, log_path=log_path, grace=self.spec.kill_grace
            )
            self.guard.agent_started(task.id, agent.identity)
            attempt_id = self.store.start_attempt(
                self.run_id,
                task.id,
                number=number,
                identity=agent.identity,
                log_path=str(log_path),
                started_at=agent.started_at,
            )
            self.store.update_task(self.run_id, task.id, attempts=number)
            self._emit("agent_started", task.id, {"pid": agent.identity.pid, "attempt": number})
            try:
                ended = self._watch(task, live, agent, agent.started_at)
            finally:
                self.guard.agent_ended(task.id)
            cost = self._record(attempt_id, task.id, ended, agent.poll())
        finally:
            self.gate.release(cost_usd=cost)
            if box is not None:
                sandbox.release(box)
        return ended

    def _resume_attempt(self, live: Live, attempt: AttemptRow) -> _Ended:
        """Pick up the last attempt of a previous manager.

        An attempt still open is adopted: watched until its process (if still alive) ends,
        then read from its log. A finished one is taken as it was recorded.
        """
        if attempt.ended_at is not None:
            outcome = {
                TaskState.RATE_LIMITED.value: AgentOutcome.RATE_LIMITED,
                "succeeded": AgentOutcome.SUCCESS,
            }.get(attempt.outcome or "", AgentOutcome.FAILED)
            result = AgentResult(
                outcome=outcome, reason=attempt.reason, session_id=attempt.session_id
            )
            return _Ended(result=result)
        identity = ProcessIdentity(
            pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid
        )
        log_path = Path(attempt.log_path)
        agent = supervisor.adopt(identity, log_path=log_path, started_at=attempt.started_at)
        self._state(live.task.id, TaskState.RUNNING)
        self.gate.adopt()
        self.guard.agent_started(live.task.id, identity)
        cost: float | None = None
        try:
            try:
                ended = self._watch(live.task, live, agent, attempt.started_at)
            finally:
                self.guard.agent_ended(live.task.id)
            # What the shim saw, when the agent ended while no manager watched it.
            shim = supervisor.read_record(supervisor.record_path(log_path))
            code, end = (None, None) if shim is None else (shim.exit_code, shim.ended_at)
            cost = self._record(attempt.id, live.task.id, ended, code, ended_at=end)
        finally:
            self.gate.release(cost_usd=cost)
            if self.spec.sandbox:
                path = worktree_path(self.spec, live.task)
                sandbox.release(self._confinement(path, self._logs(live.task)))
        return ended

    def _record(
        self,
        attempt_id: int,
        task_id: str,
        ended: _Ended,
        code: int | None,
        *,
        ended_at: float | None = None,
    ) -> float | None:
        r = ended.result
        if r.cost_is_session_total and r.cost_usd is not None and r.session_id:
            earlier = sum(
                a.cost_usd or 0.0
                for a in self.store.attempts(self.run_id, task_id)
                if a.session_id == r.session_id and a.id != attempt_id
            )
            r = dataclasses.replace(r, cost_usd=max(0.0, r.cost_usd - earlier))
        outcome = ended.cut_short.value if ended.cut_short else _attempt_outcome(r)
        usage = AttemptUsage(
            reason=ended.reason or r.reason,
            session_id=r.session_id,
            cost_usd=r.cost_usd,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            cache_read_tokens=r.cache_read_tokens,
        )
        self.store.end_attempt(
            attempt_id, exit_code=code, outcome=outcome, ended_at=ended_at, usage=usage
        )
        row = self.store.task(self.run_id, task_id)
        if row is not None and (r.cost_usd is not None or r.tokens_in is not None):
            self.store.update_task(
                self.run_id,
                task_id,
                cost_usd=(row.cost_usd or 0.0) + (r.cost_usd or 0.0),
                tokens_in=(row.tokens_in or 0) + (r.tokens_in or 0),
                tokens_out=(row.tokens_out or 0) + (r.tokens_out or 0),
                cache_read_tokens=(row.cache_read_tokens or 0) + (r.cache_read_tokens or 0),
            )
        return r.cost_usd

    def _watch(
        self, task: Task, live: Live, agent: supervisor.Supervised, started_at: float
    ) -> _Ended:
        """Wait for the agent to end, enforcing timeouts and stop requests."""
        deadline = started_at + task.timeout if task.timeout else None
        adapter = adapter_for(task.agent)
        while True:
            ended, code = exit_status(agent, timeout=POLL_SECONDS)
            if ended:
                text = _read_log(agent.log_path)
                return _Ended(
                    result=adapter.interpret(exit_code=code, log_text=text, now=time.time())
                )
            cut: tuple[TaskState, str] | None = None
            if live.stop.is_set():
                cut = (TaskState.STOPPED, "stopped")
            elif deadline is not None and time.time() >= deadline:
                cut = (TaskState.TIMED_OUT, f"timed out after {task.timeout:g}s")
            elif task.idle_timeout and agent.idle_seconds() >= task.idle_timeout:
                cut = (TaskState.TIMED_OUT, f"no output for {task.idle_timeout:g}s")
            if cut is not None:
                agent.stop(grace=self.spec.kill_grace)
                text = _read_log(agent.log_path)
                partial = adapter.interpret(exit_code=None, log_text=text, now=time.time())
                return _Ended(result=partial, cut_short=cut[0], reason=cut[1])

    # -- helpers --------------------------------------------------------------------------

    def _state(self, task_id: str, state: TaskState, **fields: object) -> None:
        # Intermediate states are informational; the main thread records final ones.
        self.store.update_task(self.run_id, task_id, state=state, **fields)
        data: dict[str, object] = {"state": state.value}
        if fields.get("reason"):
            data["reason"] = fields["reason"]
        self._emit("state", task_id, data)

    def _waiting(self, task: Task) -> Callable[[str], None]:
        return lambda reason: self._state(task.id, TaskState.PENDING, reason=reason)

    def _logs(self, task: Task) -> Path:
        return self._logs_root / task.id

    def _gitconfig(self, task: Task) -> Path:
        """A task's own global git config: the user's identity and ignore file, nothing else."""
        path = self._logs(task) / "gitconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        for key, value in self._git_identity.items():
            git.git(path.parent, "config", "--file", str(path), key, value)
        return path

    def _confinement(self, worktree: Path, logs: Path) -> sandbox.Confinement:
        return sandbox.Confinement(
            worktree=worktree,
            common_dir=self.repo.common_dir,
            state_dir=self.repo.state_dir,
            config_dir=logs / "agent-config",  # as passed to adapter.env above
            temp_dir=logs / "tmp",
            findings=self._findings,
            extra=self.spec.sandbox_writable,
        )

    def _start_commit(self, task: Task) -> str | Outcome:
        if not task.depends_on:
            return self.base_commit
        tips = []
        for dep in task.depends_on:
            tip = git.rev_parse(self.repo, self._tasks[dep].branch)
            if tip is None:
                return Outcome(state=TaskState.BLOCKED, reason=f"branch of {dep} is missing")
            tips.append(tip)
        if len(tips) == 1:
            return tips[0]
        try:
            return git.merge_commits(
                self.repo,
                tips,
                message=f"swarm: merge dependencies of {task.id}",
                author=self.spec.commit_author,
            )
        except git.MergeConflictError as exc:
            files = ", ".join(exc.files) or "unknown files"
            deps = ", ".join(task.depends_on)
            return Outcome(
                state=TaskState.BLOCKED, reason=f"dependencies {deps} conflict in {files}"
            )

    def _env(self, task: Task, path: Path, base: str, slot: int) -> dict[str, str]:
        port = self.spec.port_base + slot * self.spec.port_block
        return clean_env(
            {
                # git inside the worktree reaches that worktree only, whatever HOME holds.
                "GIT_CEILING_DIRECTORIES": str(path.parent),
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


def _git_identity(root: Path) -> dict[str, str]:
    """The user's effective identity and global ignore file, as git resolves them in *root*."""
    found = {}
    for key in ("user.name", "user.email", "core.excludesFile"):
        value = git.git(root, "config", "--path", "--get", key, check=False).strip()
        if value:
            found[key] = value
    return found


def exit_status(agent: supervisor.Supervised, *, timeout: float) -> tuple[bool, int | None]:
    """Wait up to *timeout*: (whether the agent has ended, its exit code when known)."""
    code = agent.wait(timeout=timeout)
    if code is not None:
        return True, code
    if agent.alive():
        return False, None
    # It exited between the wait and the liveness check (which reaped it): collect the
    # status now, or a successful agent would be reported as ending without one.
    return True, agent.wait(timeout=0)


def worktree_path(spec: RunSpec, task: Task) -> Path:
    """Where *task*'s worktree lives."""
    if spec.worktree_root is None:
        msg = "RunSpec.worktree_root must be set"
        raise ValueError(msg)
    return spec.worktree_root / task.id


def repair_prompt(failure: CheckFailure) -> str:
    """The prompt that hands failing checks back to the agent."""
    return (
        "The checks on your work failed. Fix the problem (do not weaken or skip the checks), "
        f"then stop.\n\n{failure}"
    )


def _failed(failure: CheckFailure) -> Outcome:
    """The outcome of a setup or check step that did not pass."""
    if failure.stopped:
        return Outcome(state=TaskState.STOPPED, reason=failure.summary)
    return Outcome(state=TaskState.FAILED, reason=str(failure))


def _attempt_outcome(result: AgentResult) -> str:
    if result.outcome is AgentOutcome.RATE_LIMITED:
        return TaskState.RATE_LIMITED.value
    return "succeeded" if result.outcome is AgentOutcome.SUCCESS else TaskState.FAILED.value


def _read_log(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - LOG_READ_LIMIT))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
