"""The run loop: scheduler + worktrees + supervisor + store, one thread per task in flight.

The main thread owns scheduling and every final state; each started task gets a worker thread
that provisions its worktree, supervises its agent, checkpoints and checks, and hands back an
outcome. The work is a pipeline: up to ``jobs`` tasks are provisioned ahead while agents run,
an agent holds one of the ``jobs`` agent slots only while its process lives, and checks run
under their own ``jobs`` bound, so git and check overhead overlaps agent time instead of adding
to it. Stop requests (Ctrl-C, SIGTERM, ``swarm stop``) reach workers as events.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm import git, supervisor, worktrees
from worktree_swarm.agents import render_argv
from worktree_swarm.errors import SwarmError
from worktree_swarm.models import RunSpec, Task, TaskState
from worktree_swarm.proc import clean_env
from worktree_swarm.proc import run as run_cmd
from worktree_swarm.scheduler import Scheduler
from worktree_swarm.store import Store, TaskRow

POLL_SECONDS = 0.05
TAIL_LINES = 15

Observer = Callable[[str, str | None, Mapping[str, object]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a worker reports back for one task."""

    state: TaskState
    reason: str = ""


@dataclass(slots=True, kw_only=True)
class _Live:
    task: Task
    port_slot: int
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def run_dir(repo: git.Repo, run_id: str) -> Path:
    """Where a run's prompts and logs live (inside the git common dir, never committed)."""
    return repo.state_dir / "runs" / run_id


def store_path(repo: git.Repo) -> Path:
    """The state database of *repo*."""
    return repo.state_dir / "state.db"


class Runner:
    """Execute one run to completion; create with :meth:`create` then call :meth:`execute`."""

    def __init__(
        self,
        *,
        repo: git.Repo,
        spec: RunSpec,
        store: Store,
        run_id: str,
        base_commit: str,
        observer: Observer | None = None,
    ) -> None:
        self.repo = repo
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.base_commit = base_commit
        self._observer = observer
        self._tasks = {t.id: t for t in spec.tasks}
        self._scheduler = Scheduler(spec.tasks)
        self._states = {t.id: TaskState.PENDING for t in spec.tasks}
        self._live: dict[str, _Live] = {}
        self._done: queue.Queue[tuple[str, Outcome]] = queue.Queue()
        self._stopping = threading.Event()
        self._agent_slots = threading.Semaphore(spec.jobs)
        self._check_slots = threading.Semaphore(spec.jobs)

    @classmethod
    def create(
        cls, *, repo: git.Repo, spec: RunSpec, store: Store, observer: Observer | None = None
    ) -> Runner:
        """Record a new run (base commit, tasks) in the store and return its runner."""
        run_id = new_run_id()
        base = git.head_commit(repo)
        manager = supervisor.identity_of(os.getpid())
        store.create_run(
            run_id=run_id,
            base_commit=base,
            repo_root=str(repo.root),
            jobs=spec.jobs,
            manager=manager,
            spec_json=json.dumps(_spec_summary(spec)),
        )
        store.add_tasks(run_id, [(t, t.branch, str(worktree_path(spec, t))) for t in spec.tasks])
        return cls(
            repo=repo, spec=spec, store=store, run_id=run_id, base_commit=base, observer=observer
        )

    # -- main loop -----------------------------------------------------------------------

    def execute(self) -> dict[str, TaskState]:
        """Run every task to a final state; returns the final states.

        KeyboardInterrupt stops every agent (whole trees), records them as stopped and
        re-raises once the state is consistent.
        """
        self._emit("run_started", None, {"run_id": self.run_id, "base": self.base_commit})
        try:
            while True:
                self._apply_blocking()
                if self._stopping.is_set():
                    self._stop_pending()
                else:
                    self._launch_ready()
                if not self._live:
                    break
                self._wait_for_one()
        except KeyboardInterrupt:
            self.request_stop()
            self._drain()
            self.store.finish_run(self.run_id, status="interrupted")
            self._emit("run_finished", None, {"status": "interrupted"})
            raise
        status = "stopped" if self._stopping.is_set() else "finished"
        self.store.finish_run(self.run_id, status=status)
        self._emit("run_finished", None, {"status": status})
        return dict(self._states)

    def request_stop(self) -> None:
        """Stop every live agent and start nothing new (safe from a signal handler)."""
        self._stopping.set()
        for live in list(self._live.values()):
            live.stop.set()

    def _launch_ready(self) -> None:
        # Twice `jobs` in flight: one `jobs` running agents, one provisioning or checking.
        slots = 2 * self.spec.jobs - len(self._live)
        picked = self._scheduler.pick(states=self._states, running=self._live.keys(), slots=slots)
        for task_id in picked:
            self._start(self._tasks[task_id])

    def _start(self, task: Task) -> None:
        used = {live.port_slot for live in self._live.values()}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        live = _Live(task=task, port_slot=slot)
        self._live[task.id] = live
        # In flight for the scheduler; the store says `running` once the agent starts.
        self._states[task.id] = TaskState.RUNNING
        live.thread = threading.Thread(
            target=self._worker, args=(live,), name=f"swarm-{task.id}", daemon=True
        )
        live.thread.start()

    def _wait_for_one(self) -> None:
        """Block until a worker finishes, polling the store for `swarm stop` requests."""
        while True:
            try:
                task_id, outcome = self._done.get(timeout=0.25)
            except queue.Empty:
                self._poll_stop_requests()
                continue
            self._finish(task_id, outcome)
            return

    def _finish(self, task_id: str, outcome: Outcome) -> None:
        live = self._live.pop(task_id)
        if live.thread is not None:
            live.thread.join()
        fields: dict[str, object] = {"ended_at": time.time(), "reason": outcome.reason}
        self._set_state(task_id, outcome.state, **fields)

    def _drain(self) -> None:
        while self._live:
            task_id, outcome = self._done.get()
            self._finish(task_id, outcome)
        self._stop_pending()

    def _poll_stop_requests(self) -> None:
        for row in self.store.tasks(self.run_id):
            if row.stop_requested and row.task_id in self._live:
                self._live[row.task_id].stop.set()
            elif row.stop_requested and self._states[row.task_id] is TaskState.PENDING:
                self._set_state(row.task_id, TaskState.STOPPED, reason="stopped before it started")

    def _apply_blocking(self) -> None:
        for task_id, reason in self._scheduler.newly_blocked(self._states).items():
            self._set_state(task_id, TaskState.BLOCKED, reason=reason, ended_at=time.time())

    def _stop_pending(self) -> None:
        for task_id, state in self._states.items():
            if state is TaskState.PENDING:
                self._set_state(task_id, TaskState.STOPPED, reason="run stopped before it started")

    def _set_state(self, task_id: str, state: TaskState, **fields: object) -> None:
        self._states[task_id] = state
        self.store.update_task(self.run_id, task_id, state=state, **fields)
        data: dict[str, object] = {"state": state.value}
        if fields.get("reason"):
            data["reason"] = fields["reason"]
        self._emit("state", task_id, data)

    def _emit(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        self.store.add_event(self.run_id, kind, task_id=task_id, data=data)
        if self._observer is not None:
            self._observer(kind, task_id, data)

    # -- worker thread -------------------------------------------------------------------

    def _worker(self, live: _Live) -> None:
        try:
            outcome = self._run_task(live)
        except SwarmError as exc:
            outcome = Outcome(state=TaskState.FAILED, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker must always report back
            outcome = Outcome(state=TaskState.FAILED, reason=f"internal error: {exc!r}")
        self._done.put((live.task.id, outcome))

    def _run_task(self, live: _Live) -> Outcome:
        task = live.task
        start = self._start_commit(task)
        if isinstance(start, Outcome):
            return start
        path = worktree_path(self.spec, task)
        worktrees.create_worktree(self.repo, path=path, branch=task.branch, start=start)
        self.store.update_task(self.run_id, task.id)
        logs = run_dir(self.repo, self.run_id) / task.id
        env = self._agent_env(task, path, start, live.port_slot)
        if task.copy:
            worktrees.copy_into(self.repo.root, path, task.copy)
        failed_setup = _run_steps(task.setup, cwd=path, env=env, log=logs / "setup.log")
        if failed_setup:
            return Outcome(state=TaskState.FAILED, reason=f"setup {failed_setup}")
        if live.stop.is_set():
            return Outcome(state=TaskState.STOPPED, reason="stopped")
        state, reason = self._supervise(task, live, path, env, logs)
        message = f"swarm: checkpoint {task.id} attempt 1 ({state.value})"
        tip = git.checkpoint(path, message=message, author=self.spec.commit_author)
        stat = git.diff_stat(self.repo, start, tip or git.rev_parse_in(path, "HEAD") or start)
        self.store.update_task(
            self.run_id,
            task.id,
            diff_files=stat.files,
            diff_insertions=stat.insertions,
            diff_deletions=stat.deletions,
        )
        if state is not TaskState.DONE:
            return Outcome(state=state, reason=reason)
        if stat.files == 0:
            return Outcome(state=TaskState.NO_CHANGES, reason="agent changed nothing")
        if task.checks:
            self._set_state_from_worker(task.id, TaskState.CHECKING)
            with self._check_slots:
                failed = _run_steps(task.checks, cwd=path, env=env, log=logs / "checks.log")
            if failed:
                return Outcome(state=TaskState.FAILED, reason=f"check {failed}")
        return Outcome(state=TaskState.DONE)

    def _set_state_from_worker(self, task_id: str, state: TaskState, **fields: object) -> None:
        # Intermediate states are informational; the main thread owns final ones.
        self.store.update_task(self.run_id, task_id, state=state, **fields)
        self._emit("state", task_id, {"state": state.value})

    def _acquire_agent_slot(self, live: _Live) -> bool:
        """Wait for an agent slot; False when the task was stopped meanwhile."""
        while not self._agent_slots.acquire(timeout=0.1):
            if live.stop.is_set():
                return False
        return True

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

    def _agent_env(self, task: Task, path: Path, base: str, slot: int) -> dict[str, str]:
        port = self.spec.port_base + slot * self.spec.port_block
        return clean_env(
            {
                "SWARM_RUN_ID": self.run_id,
                "SWARM_TASK_ID": task.id,
                "SWARM_WORKTREE": str(path),
                "SWARM_BRANCH": task.branch,
                "SWARM_BASE": base,
                "SWARM_PORT": str(port),
                "SWARM_CONTEXT": str(run_dir(self.repo, self.run_id) / "findings.md"),
                **dict(task.env),
            }
        )

    def _supervise(
        self, task: Task, live: _Live, path: Path, env: dict[str, str], logs: Path
    ) -> tuple[TaskState, str]:
        logs.mkdir(parents=True, exist_ok=True)
        prompt_file = logs / "prompt.md"
        prompt_file.write_text(task.prompt, encoding="utf-8")
        argv = render_argv(
            task.agent_argv,
            {
                "prompt": task.prompt,
                "prompt_file": str(prompt_file),
                "task_id": task.id,
                "worktree": str(path),
                "branch": task.branch,
            },
        )
        log_path = logs / "attempt-1.log"
        if not self._acquire_agent_slot(live):
            return TaskState.STOPPED, "stopped before its agent started"
        try:
            self._set_state_from_worker(task.id, TaskState.RUNNING, started_at=time.time())
            agent = supervisor.spawn(argv, cwd=path, env=env, log_path=log_path)
            return self._track(task, live, agent, log_path)
        finally:
            self._agent_slots.release()

    def _track(
        self, task: Task, live: _Live, agent: supervisor.AgentProcess, log_path: Path
    ) -> tuple[TaskState, str]:
        attempt_id = self.store.start_attempt(
            self.run_id,
            task.id,
            number=1,
            identity=agent.identity,
            log_path=str(log_path),
            started_at=agent.started_at,
        )
        self.store.update_task(self.run_id, task.id, attempts=1)
        self._emit("agent_started", task.id, {"pid": agent.identity.pid})
        state, reason = self._watch(task, live, agent)
        code = agent.poll()
        self.store.end_attempt(attempt_id, exit_code=code, outcome=state.value)
        return state, reason

    def _watch(
        self, task: Task, live: _Live, agent: supervisor.AgentProcess
    ) -> tuple[TaskState, str]:
        deadline = agent.started_at + task.timeout if task.timeout else None
        while True:
            code = agent.wait(timeout=POLL_SECONDS)
            if code is not None:
                if code == 0:
                    return TaskState.DONE, ""
                tail = agent.last_line()
                return TaskState.FAILED, f"agent exited {code}" + (f": {tail}" if tail else "")
            if live.stop.is_set():
                self._kill(agent)
                return TaskState.STOPPED, "stopped"
            if deadline is not None and time.time() >= deadline:
                self._kill(agent)
                return TaskState.TIMED_OUT, f"timed out after {task.timeout:g}s"
            if task.idle_timeout and agent.idle_seconds() >= task.idle_timeout:
                self._kill(agent)
                return TaskState.TIMED_OUT, f"no output for {task.idle_timeout:g}s"

    def _kill(self, agent: supervisor.AgentProcess) -> None:
        agent.stop(grace=self.spec.kill_grace)


def worktree_path(spec: RunSpec, task: Task) -> Path:
    """Where *task*'s worktree lives."""
    if spec.worktree_root is None:
        msg = "RunSpec.worktree_root must be set"
        raise ValueError(msg)
    return spec.worktree_root / task.id


def _run_steps(
    steps: tuple[tuple[str, ...], ...], *, cwd: Path, env: dict[str, str], log: Path
) -> str:
    """Run argv steps in order, appending output to *log*; returns '' or why one failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        for argv in steps:
            out.write(f"$ {' '.join(argv)}\n")
            try:
                proc = run_cmd(argv, cwd=cwd, env=env, check=False)
            except OSError as exc:
                out.write(f"{exc}\n")
                return f"`{' '.join(argv)}` could not start: {exc.strerror}"
            output = (proc.stdout or "") + (proc.stderr or "")
            out.write(output)
            if proc.returncode != 0:
                tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
                return f"`{' '.join(argv)}` exited {proc.returncode}" + (
                    f":\n{tail}" if tail else ""
                )
    return ""


def _spec_summary(spec: RunSpec) -> dict[str, object]:
    return {
        "jobs": spec.jobs,
        "worktree_root": str(spec.worktree_root),
        "tasks": [t.id for t in spec.tasks],
        "kill_grace": spec.kill_grace,
    }


def states_summary(rows: list[TaskRow]) -> dict[str, int]:
    """Count tasks per state, for the end-of-run line."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state.value] = counts.get(row.state.value, 0) + 1
    return counts
