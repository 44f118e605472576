"""The node side of the Ray executor: one attempt of one task, on whichever node Ray placed it.

A :class:`NodeAgent` lives in a named, detached Ray actor (``run/ray_exec.py`` creates it) but
knows nothing of Ray: it is plain Python, so it is tested and typed like the rest. On its node it
keeps a mirror of the repository (``<node dir>/mirrors``, made and fetched under a file lock,
``gc.auto=0``), clones the task's branch from the remote with ``--reference`` to that mirror,
runs the agent under the same shim and adapter as the local executor, and pushes checkpoints
of the clone to the task's branch on the remote: periodically while the agent runs, and when
the attempt ends. The remote's branch is the only state that outlives a node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from worktree_swarm.agents import adapter_for, claude_auth
from worktree_swarm.agents.base import prompt_argument
from worktree_swarm.core.errors import GitError, SwarmError
from worktree_swarm.core.task import Task
from worktree_swarm.git import checkpoints, gitconfig, runner, staged, status
from worktree_swarm.git import repo as git
from worktree_swarm.guard import sandbox, surface, surface_diff, surface_restore
from worktree_swarm.infra import disk, fs, proc_scan, proctree, redact, starts, supervisor
from worktree_swarm.infra.logtail import read_log_end
from worktree_swarm.infra.proc import task_env
from worktree_swarm.report import notes
from worktree_swarm.run import ray_session
from worktree_swarm.run.checks import CheckFailure, run_checks, run_steps

# Where a node keeps its mirrors and clones, and the name `swarm status` shows for it. Both come
# from the environment of the node's `ray start` (the actor's worker inherits it).
NODE_DIR_ENV = "SWARM_NODE_DIR"
NODE_NAME_ENV = "SWARM_NODE_NAME"
TAIL_LIMIT = 1 << 20
# Where an attempt's actor writes its process's identity, in the attempt's logs.
ACTOR_FILE = "actor.json"
# How long a node waits for Ray to kill the actor of an attempt it ends before doing it itself.
ACTOR_EXIT_SECONDS = 15.0


def node_dir() -> Path:
    """The node's own directory for mirrors and clones."""
    configured = os.environ.get(NODE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "worktree-swarm" / "node"


def node_name() -> str:
    """The name of this node: ``SWARM_NODE_NAME``, else the host name."""
    return os.environ.get(NODE_NAME_ENV) or socket.gethostname()


def sandbox_problem() -> str:
    """Why bubblewrap cannot sandbox agents on this node (one line), or ``""``."""
    try:
        sandbox.check_available()
    except SwarmError as exc:
        return str(exc)
    return ""


def task_dirs(run_ids: tuple[str, ...]) -> tuple[str, list[tuple[str, str, str, int]]]:
    """On a node: its name, and (run, task, path, bytes) of each task dir of *run_ids* in use.

    In use means it holds anything (a clone, logs): an attempt that ended removed its own.
    """
    found = []
    for run_id in run_ids:
        run_dir = node_dir() / "runs" / run_id
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for task_dir in sorted(run_dir.iterdir()):
                if task_dir.is_dir() and any(task_dir.iterdir()):
                    used = disk.usage(task_dir).actual
                    found.append((run_id, task_dir.name, str(task_dir), used))
    return node_name(), found


def remove_task_dir(run_id: str, task_id: str) -> str:
    """On a node: remove what attempts of *task_id* of *run_id* left here; its path."""
    run_dir = node_dir() / "runs" / run_id
    task_dir = run_dir / task_id
    if task_dir.parent != run_dir or task_id in {"", ".", ".."}:
        raise SwarmError(f"not a task of run {run_id}: {task_id!r}")
    shutil.rmtree(task_dir)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when empty
    return str(task_dir)


def end_attempt(run_id: str, task_id: str, attempt: int, *, grace: float) -> None:
    """On a node: kill what attempt *attempt* of a task started here, and remove its clone.

    For an attempt whose actor was killed without ending it (it had stopped answering):
    the actor's process is waited for (Ray kills one that does not answer after a few
    seconds) and killed if it is still there, so it never pushes again. Its agent, setup
    steps and checks run under shims of their own, each writing its record in the attempt's
    logs, and outlive the actor: each is killed, tree and all (SIGTERM, SIGKILL after
    *grace*). Then the clone and the logs go, as :meth:`NodeAgent.discard` would have done
    (the task's work is on the remote up to its last push).
    """
    run_dir = node_dir() / "runs" / run_id
    task_dir = run_dir / task_id
    if task_dir.parent != run_dir or task_id in {"", ".", ".."}:
        raise SwarmError(f"not a task of run {run_id}: {task_id!r}")
    logs = task_dir / f"logs-{attempt}"
    _end_actor(logs / ACTOR_FILE)
    proc_scan.kill_marked(logs, grace=grace)
    shutil.rmtree(task_dir / "work", ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty
        task_dir.rmdir()
        run_dir.rmdir()


def _end_actor(record: Path) -> None:
    """Make sure the actor process *record* names (an :data:`ACTOR_FILE`) has ended."""
    try:
        data = json.loads(fs.read_file(record))
        identity = proctree.identity_of(int(data["pid"]))
        recorded = float(data["create_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if (
        identity is None
        or identity.pid == os.getpid()
        or abs(identity.create_time - recorded) > proctree.CREATE_TIME_TOLERANCE
    ):
        return  # gone, or its PID is another process's now
    with contextlib.suppress(psutil.Error):
        actor = psutil.Process(identity.pid)
        _gone, alive = psutil.wait_procs([actor], timeout=ACTOR_EXIT_SECONDS)
        for process in alive:  # SIGKILL ends a stopped process too
            process.kill()
        psutil.wait_procs(alive, timeout=10)


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Everything a node needs for one attempt (no secrets: those live on the node)."""

    run_id: str
    task: Task
    attempt: int
    remote_url: str
    author: str
    identity: tuple[tuple[str, str], ...]  # the user's git user.name / user.email
    kill_grace: float
    checkpoint_interval: float
    max_file: int | None = None  # the run's cap on one file of the branch
    max_log: int | None = None  # the run's cap on what one setup or check step prints
    sandbox: bool = False
    sandbox_writable: tuple[str, ...] = ()  # as the coordinator expanded them
    findings: str = ""  # the run's findings file as it was (redacted), "" for its header alone


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What :meth:`NodeAgent.poll` reports."""

    ended: bool
    exit_code: int | None
    idle_seconds: float  # since its log last grew, on the node's wall clock
    log_size: int  # the log's size now: the coordinator times its growth on its own clock


def _make_dirs(path: Path, *, tries: int = 3) -> None:
    """``mkdir -p`` *path*, again if another attempt's end removed a parent meanwhile.

    An attempt that ends removes its run's directory when it is empty: a sibling attempt
    making its own directories in it just then finds it gone between two of its steps.
    """
    for _ in range(tries - 1):
        with contextlib.suppress(FileNotFoundError):
            path.mkdir(parents=True, exist_ok=True)
            return
    path.mkdir(parents=True, exist_ok=True)


class NodeAgent:
    """One attempt of one task on this node: prepare, start, poll, tail, stop, finish."""

    def __init__(self, assignment: Assignment) -> None:
        self.a = assignment
        root = node_dir() / "runs" / assignment.run_id / assignment.task.id
        self.work = root / "work"
        self.logs = root / f"logs-{assignment.attempt}"
        self.log_path = self.logs / f"attempt-{assignment.attempt}.log"
        self._agent: supervisor.AgentProcess | None = None
        self._git_lock = threading.Lock()
        self._surface: surface.Surface = {}
        self._planted: list[str] = []
        self._ended = threading.Event()
        self._stopping = threading.Event()
        self._step = threading.Lock()  # held while a setup or check step runs
        self._pusher: threading.Thread | None = None
        self._notes_from = 0  # where what the agent adds to its findings file starts
        # What goes back to the head is redacted here too: a node's own secrets (its API key,
        # in the environment of its `ray start`) are known on the node only.
        redact.add_env(assignment.task.env)

    def node(self) -> str:
        """The name of this node: ``SWARM_NODE_NAME``, else the host name."""
        return node_name()

    def prepare(self) -> str:
        """Clone the task's branch from the remote (by way of the mirror); its tip."""
        if self.a.sandbox:
            problem = sandbox_problem()
            if problem:
                raise SwarmError(f"node {self.node()}: {problem}")
        # Who this actor is on its node: what ends the attempt there if it stops answering.
        _make_dirs(self.logs)
        me = psutil.Process()
        identity = {"pid": me.pid, "create_time": starts.of(me)}
        (self.logs / ACTOR_FILE).write_text(json.dumps(identity), encoding="utf-8")
        mirror = self._mirror()
        shutil.rmtree(self.work, ignore_errors=True)  # an earlier attempt here: the remote wins
        self.work.parent.mkdir(parents=True, exist_ok=True)
        runner.run(
            self.work.parent,
            # --no-local: from a path too, objects come from the mirror, not a copy per clone.
            "clone", "--quiet", "--no-tags", "--no-local", "--reference", str(mirror),
            "--branch", self.a.task.branch, "--", self.a.remote_url, str(self.work),
        )  # fmt: skip
        self.logs.mkdir(parents=True, exist_ok=True)
        gitconfig.write_config_file(self.logs / "gitconfig", dict(self.a.identity))
        tip = git.rev_parse_in(self.work, "HEAD")
        if tip is None:
            raise GitError(f"the clone of {self.a.task.branch} has no HEAD")
        return tip

    def _mirror(self) -> Path:
        """The node's mirror of the remote, made or brought up to date under its lock."""
        key = hashlib.sha256(self.a.remote_url.encode()).hexdigest()[:16]
        mirrors = node_dir() / "mirrors"
        mirrors.mkdir(parents=True, exist_ok=True)
        mirror = mirrors / f"{key}.git"
        with FileLock(str(mirrors / f"{key}.lock")):
            if not (mirror / "HEAD").exists():
                shutil.rmtree(mirror, ignore_errors=True)
                runner.run(
                    mirrors, "clone", "--quiet", "--bare", "--", self.a.remote_url, str(mirror)
                )
                runner.run(mirror, "config", "gc.auto", "0")
            else:
                runner.run(
                    mirror, "fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/heads/*"
                )
        return mirror

    def start(self, *, prompt: str, session: str | None, resume_prompt: str | None) -> int:
        """Start the agent under the shim; the shim's pid on this node."""
        task = self.a.task
        # git's own files of the clone (config, hooks, info) as setup left them: the baseline.
        self._surface = surface.read(self.work / ".git", None)
        adapter = adapter_for(task.agent)
        self.logs.mkdir(parents=True, exist_ok=True)
        # $SWARM_CONTEXT: the run's findings so far; what the agent adds goes back to the run.
        findings = self.logs / notes.FILE_NAME
        self._notes_from = notes.start_copy(findings, self.a.findings, run_id=self.a.run_id)
        if session is None:  # a resumed session was told already
            prompt += notes.findings_instructions(str(findings))
        prompt_file = self.logs / f"prompt-{self.a.attempt}.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        values = {
            "prompt": prompt_argument(prompt, prompt_file),  # long: a pointer to the file
            "prompt_file": str(prompt_file),
            "task_id": task.id,
            "worktree": str(self.work),
            "branch": task.branch,
        }
        # What to do now goes in as the prompt does (a resumed session's prompt is just that).
        resume = None if resume_prompt is None else prompt_argument(prompt, prompt_file)
        argv = adapter.argv(
            task.agent_argv, values=values, session_id=session, resume_prompt=resume
        )
        env = adapter.env(
            base=self._base_env(), task_id=task.id, config_dir=self.logs / "agent-config"
        )
        if self.a.sandbox:  # bubblewrap around the agent only, writable in its clone
            claude_auth.confine(self.logs / "agent-config")
            argv, env = sandbox.confine(argv, env, self._confinement())
        # Stopped by its shim if this actor dies (its node's raylet gone, with the whole
        # cluster or alone): no agent works on where nothing will push or stop it.
        self._agent = supervisor.spawn(
            argv,
            cwd=self.work,
            env=env,
            log_path=self.log_path,
            grace=self.a.kill_grace,
            parent=os.getpid(),
        )
        if self.a.checkpoint_interval > 0:
            self._pusher = threading.Thread(target=self._push_periodically, daemon=True)
            self._pusher.start()
        return self._agent.identity.pid

    def setup(self) -> tuple[CheckFailure | None, str]:
        """Run the task's `setup` steps in the clone (every attempt: a clone is new)."""
        log = self.logs / "setup.log"
        with self._step:
            failure = run_steps(
                self.a.task.setup,
                cwd=self.work,
                env=self._base_env(),
                log=log,
                what="setup",
                timeout=self.a.task.setup_timeout,
                stop=self._stopping,
                grace=self.a.kill_grace,
                max_log=self.a.max_log,
            )
        return _redacted(failure), redact.redact(read_log_end(log, 8 * 2**20))

    def _base_env(self) -> dict[str, str]:
        """The environment of the agent, setup and checks (the agent's adapter adds to it)."""
        task = self.a.task
        return task_env(
            {
                # Nor from the task's directory (git never looks up into a ceiling directory):
                # not a repository the node's directory lies in.
                "GIT_CEILING_DIRECTORIES": str(self.work.parent.parent),
                "GIT_CONFIG_GLOBAL": str(self.logs / "gitconfig"),
                "SWARM_RUN_ID": self.a.run_id,
                "SWARM_TASK_ID": task.id,
                "SWARM_WORKTREE": str(self.work),
                "SWARM_BRANCH": task.branch,
                "SWARM_CONTEXT": str(self.logs / notes.FILE_NAME),
                **dict(task.env),
            }
        )

    def poll(self) -> Progress:
        """Whether the agent has ended, with its exit code."""
        agent = self._require()
        code = agent.poll()
        ended = code is not None or not agent.alive()
        if ended and code is None:
            code = agent.wait(timeout=0)
        return Progress(
            ended=ended,
            exit_code=code,
            idle_seconds=agent.idle_seconds(),
            log_size=fs.size_of(agent.log_path),
        )

    def tail(self, offset: int) -> tuple[int, bytes]:
        """The log from *offset* on, redacted: where the next read starts, and the bytes.

        Whole lines only while the agent may still write or more follows (a secret written in
        pieces is redacted whole), at most 1 MiB per call: a longer line goes in pieces, cut
        at a blank before their last 4 KiB (no token cut in two). Multi-line secrets (a PEM
        key) are redacted in the whole log once the attempt ends (:meth:`scrub_log`).
        """
        agent = self._agent
        # Looked at before the read: an agent that had ended then has written all it will.
        writing = agent is not None and agent.poll() is None and agent.alive()
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(TAIL_LIMIT)
        except FileNotFoundError:
            return offset, b""
        full = len(chunk) == TAIL_LIMIT
        if writing or full:
            chunk = _whole_lines(chunk, full=full)
        return offset + len(chunk), redact.redact_bytes(chunk)

    def scrub_log(self) -> None:
        """Redact the whole log in place (the agent has ended): a secret over lines too."""
        redact.scrub_file(self.log_path)

    def notes_added(self) -> str:
        """What the agent added to its findings file since last asked (for the run's file)."""
        text, self._notes_from = notes.added_since(self.logs / notes.FILE_NAME, self._notes_from)
        return redact.redact(text)

    def log_text(self) -> str:
        """The end of the log, for the adapter's reading (redacted)."""
        return redact.redact(read_log_end(self.log_path, 8 * 2**20))

    def stop(self) -> int | None:
        """Kill the agent's whole tree on this node (the shim's stop) and reap it; end checks."""
        self._stopping.set()
        if self._agent is None:  # in setup: the step sees the stop and ends
            return None
        return self._agent.stop(grace=self.a.kill_grace)

    def check(self, *, base: str) -> tuple[CheckFailure | None, str]:
        """Run the task's checks in the clone: the failure and the log.

        After :meth:`finish`, or after :meth:`prepare` alone to check a pushed branch again.
        """
        log = self.logs / "checks.log"
        with self._step:
            failure = run_checks(
                self.a.task,
                worktree=self.work,
                base=base,
                env=self._base_env(),
                log=log,
                stop=self._stopping,
                grace=self.a.kill_grace,
                max_log=self.a.max_log,
            )
        return _redacted(failure), redact.redact(read_log_end(log, 8 * 2**20))

    def finish(self, *, message: str) -> str:
        """Checkpoint the clone and push it to the task's branch; the pushed tip.

        The attempt's trailers follow *message*, whoever asks (its coordinator, `swarm stop`).
        """
        self._ended.set()
        if self._pusher is not None:
            self._pusher.join()
        with self._git_lock:
            self._settle_git_files()
            try:
                checkpoints.checkpoint(
                    self.work,
                    message=message + self._trailers(),
                    author=self.a.author,
                    droppings=adapter_for(self.a.task.agent).droppings,
                    report_secrets=True,
                    max_file=self.a.max_file,
                )
            except checkpoints.LeftOutError as exc:  # embedded repositories, secrets, big files
                if exc.head is not None:  # everything else is committed: pushed, as locally
                    self._push(exc.head)
                # What stays "in" the clone goes with it when the attempt ends.
                where = f"the clone on node {self.node()} (removed with the attempt)"
                raise GitError(str(exc).replace(str(self.work), where)) from exc
            tip = git.rev_parse_in(self.work, "HEAD")
            if tip is None:
                raise GitError(f"{self.work} has no HEAD")
            self._push(tip)
        return tip

    def session_state(self, since: str | None) -> ray_session.SessionState | None:
        """The agent's config dir packed (its session files), unless unchanged since *since*."""
        return ray_session.pack(self.logs / "agent-config", self.work, since=since)

    def restore_session(self, state: ray_session.SessionState) -> bool:
        """Put an earlier attempt's session files in place (after :meth:`prepare`)."""
        return ray_session.unpack(state, self.logs / "agent-config", self.work)

    def disk_use(self) -> disk.DiskUsage:
        """What this attempt's clone uses on the node's disk (measured as locally)."""
        return disk.usage(self.work)

    def held(self, skip: tuple[str, ...]) -> int:
        """Actual bytes under the node's runs dir but the clones of *skip*, tasks of this run.

        That is, what other runs and lost attempts left on this node, plus the clones of this
        run's tasks that are not in *skip*.
        """
        runs = node_dir() / "runs"
        ours = runs / self.a.run_id
        scans = []
        try:
            run_dirs = list(runs.iterdir())
        except FileNotFoundError:
            return 0
        for run_dir in run_dirs:
            if run_dir != ours:
                scans.append(disk.scan(run_dir))
                continue
            with contextlib.suppress(FileNotFoundError):
                scans += [
                    disk.scan(task_dir) for task_dir in ours.iterdir() if task_dir.name not in skip
                ]
        return disk.combine(scans).actual

    def discard(self) -> None:
        """Remove this attempt's clone and logs from the node (its work is on the remote).

        A setup or check step still running (its coordinator died meanwhile) is stopped, its
        whole tree, first.
        """
        self._ended.set()
        self._stopping.set()
        with self._step:
            pass
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.logs, ignore_errors=True)
        with contextlib.suppress(OSError):  # the task's and the run's directories, when empty
            self.work.parent.rmdir()
            self.work.parent.parent.rmdir()

    # -- helpers ------------------------------------------------------------------------------

    def _confinement(self) -> sandbox.Confinement:
        return sandbox.Confinement(
            worktree=self.work,
            common_dir=self.work / ".git",
            state_dir=self.logs,
            task_dir=self.logs,
            config_dir=self.logs / "agent-config",  # as passed to adapter.env
            temp_dir=self.logs / "tmp",
            findings=self.logs / notes.FILE_NAME,  # $SWARM_CONTEXT
            extra=self.a.sandbox_writable,
        )

    def _require(self) -> supervisor.AgentProcess:
        if self._agent is None:
            raise RuntimeError("the agent was not started")
        return self._agent

    def _push(self, commit: str) -> None:
        # The branch is this task's alone; a snapshot pushed meanwhile is superseded.
        ref = f"+{commit}:refs/heads/{self.a.task.branch}"
        runner.run(self.work, "push", "--quiet", "--no-verify", self.a.remote_url, ref)

    def _push_periodically(self) -> None:
        # A wait past threading's limit raises (OverflowError): the pusher would end unseen.
        every = min(self.a.checkpoint_interval, threading.TIMEOUT_MAX)
        while not self._ended.wait(every):
            with self._git_lock, contextlib.suppress(Exception):
                if not self._ended.is_set():
                    self._snapshot()

    def submodule_work(self) -> list[str]:
        """Submodule directories of the clone holding work no commit can record."""
        return status.submodule_work(self.work)

    def planted(self) -> list[str]:
        """Git's own files of the clone the agent changed (each put back before swarm's git)."""
        return list(self._planted)

    def _settle_git_files(self) -> None:
        """Put git's own files of the clone back as cloned, noting what the agent changed.

        Repository files are code (a planted ``url.*.insteadOf`` would redirect the push, a
        hook or filter run it): an agent's write to them is an outside write, even in its own
        clone, and is undone before swarm runs git there.
        """
        dotgit = self.work / ".git"
        now = surface.read(dotgit, None)
        labels = surface_diff.changed(self._surface, now)
        if surface.RERERE in labels and surface_diff.rerere_made(self.work, self._surface, now):
            labels.remove(surface.RERERE)  # git's own on any commit (a node's config turns it on)
            self._surface[surface.RERERE] = now[surface.RERERE]
        if labels:
            surface_restore.put_back(dotgit, self._surface, labels, now)
            self._planted += [label for label in labels if label not in self._planted]

    def _trailers(self) -> str:
        return checkpoints.trailers(self.a.task.id, self.a.attempt, self.a.task.agent)

    def _snapshot(self) -> None:
        """Push the clone's files as a commit on top of HEAD, leaving the agent's index alone."""
        self._settle_git_files()
        with tempfile.TemporaryDirectory(prefix="swarm-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            runner.run(self.work, "read-tree", "HEAD", env=env)
            added = runner.run_names(self.work, "add", "--all", "--verbose", env=env).stdout
            # A file holding a secret's value is never pushed, not even for a minute, nor one
            # over max_file: the attempt's own checkpoint leaves them out too, and fails the
            # task saying so.
            staged.unstage_secrets(self.work, env=env)
            staged.unstage_over(self.work, added, self.a.max_file, env=env)
            tree = runner.run(self.work, "write-tree", env=env).stdout.strip()
            head = git.rev_parse_in(self.work, "HEAD")
            if head is None or tree == git.rev_parse_in(self.work, "HEAD^{tree}"):
                return
            message = (
                f"swarm: checkpoint {self.a.task.id} attempt {self.a.attempt} (running, "
                f"{time.strftime('%H:%M:%S', time.gmtime())} UTC)"
            ) + self._trailers()
            commit = runner.run(
                self.work,
                "commit-tree", tree, "-p", head, "-m", message,
                env=gitconfig.identity_env(self.a.author),
            ).stdout.strip()  # fmt: skip
            self._push(commit)


def _redacted(failure: CheckFailure | None) -> CheckFailure | None:
    """*failure* with its summary and output redacted, for the head."""
    if failure is None:
        return None
    return dataclasses.replace(
        failure, summary=redact.redact(failure.summary), detail=redact.redact(failure.detail)
    )


def _whole_lines(chunk: bytes, *, full: bool) -> bytes:
    """*chunk* up to its last line end; a *full* one without any, up to a blank before its end."""
    end = chunk.rfind(b"\n") + 1
    if end or not full:
        return chunk[:end]
    blank = redact.token_safe_end(chunk)
    return chunk[:blank] if blank > 0 else chunk
