"""An attempt's clone on a Ray node: made from the node's mirror, checkpointed, pushed.

:class:`NodeClone` is the part of a node's actor (:class:`worktree_swarm.run.ray_node.NodeAgent`)
that keeps the task's branch: it clones it from the remote with ``--reference`` to the node's
mirror (``<node dir>/mirrors``, made and fetched under a file lock, ``gc.auto=0``), puts git's own
files of the clone back as cloned before swarm's git runs there, and pushes checkpoints of the
clone to the task's branch on the remote: periodically while the agent runs, and when the
attempt ends. :class:`Assignment` is everything the node is told of the attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from worktree_swarm.agents import adapter_for
from worktree_swarm.core.errors import GitError, SwarmError
from worktree_swarm.core.task import Task
from worktree_swarm.git import checkpoints, gitconfig, gitfiles, quarantine, runner, staged, status
from worktree_swarm.git import repo as git
from worktree_swarm.git.process import StoppedError
from worktree_swarm.git.remote_login import login_for
from worktree_swarm.guard import surface, surface_diff, surface_entry, surface_restore
from worktree_swarm.infra import disk, proc_scan, redact, starts, supervisor
from worktree_swarm.run.ray_node_host import (
    ACTOR_FILE,
    make_dirs,
    node_dir,
    node_name,
    sandbox_problem,
)


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


class NodeClone:
    """An attempt's clone on this node: prepared, checkpointed and pushed, discarded."""

    def __init__(self, assignment: Assignment) -> None:
        self.a = assignment
        # The remote's credentials, if its URL holds any, are kept in no file of the node.
        self._remote = login_for(assignment.remote_url)
        root = node_dir() / "runs" / assignment.run_id / assignment.task.id
        self.work = root / "work"
        self.logs = root / f"logs-{assignment.attempt}"
        self.log_path = self.logs / f"attempt-{assignment.attempt}.log"
        self._agent: supervisor.AgentProcess | None = None
        self._git_lock = threading.Lock()
        self._surface: surface_entry.Surface = {}
        self._planted: list[str] = []
        self._switched: str | None = None  # the branch (or detached HEAD) its agent left it on
        self._ended = threading.Event()
        self._stopping = threading.Event()
        self._step = threading.Lock()  # held while the clone is made, or a setup or check step runs
        self._pusher: threading.Thread | None = None
        # Streaks of failed running checkpoints so far, and why the current one fails ("" when
        # the last one pushed): one tuple, read whole by another thread.
        self._push_failure: tuple[int, str] = (0, "")
        self._notes_from = 0  # where what the agent adds to its findings file starts
        # What goes back to the head is redacted here too: a node's own secrets (its API key,
        # in the environment of its `ray start`) are known on the node only.
        redact.add_env(assignment.task.env)

    def node(self) -> str:
        """The name of this node: ``SWARM_NODE_NAME``, else the host name."""
        return node_name()

    def prepare(self) -> str:
        """Clone the task's branch from the remote (by way of the mirror); its tip.

        A stop or discard meanwhile ends the clone (its git stopped, its directory removed)
        and fails this: a discard waits for that, so nothing made here outlives it. The
        node's mirror, shared by its attempts, is brought up to date whole first (a discard
        then waits for that too, past the head's wait for it at worst).
        """
        with self._step:
            self._unless_stopped()
            if self.a.sandbox:
                problem = sandbox_problem()
                if problem:
                    raise SwarmError(f"node {self.node()}: {problem}")
            # Who this actor is on its node: what ends the attempt there if it stops answering.
            make_dirs(self.logs)
            me = psutil.Process()
            identity = {"pid": me.pid, "create_time": starts.of(me)}
            (self.logs / ACTOR_FILE).write_text(json.dumps(identity), encoding="utf-8")
            mirror = self._mirror()  # shared by the node's attempts: not stopped by a stop
            self._unless_stopped()
            shutil.rmtree(self.work, ignore_errors=True)  # an earlier attempt: the remote wins
            self.work.parent.mkdir(parents=True, exist_ok=True)
            try:
                runner.run(
                    self.work.parent,
                    *self._remote.args,
                    # --no-local: from a path too, objects come from the mirror, not a copy.
                    "clone", "--quiet", "--no-tags", "--no-local", "--reference", str(mirror),
                    "--branch", self.a.task.branch, "--", self._remote.url, str(self.work),
                    env=self._remote.env,
                    stop=self._stopping,
                    tied=True,  # Ray kills this actor's worker without a word: git goes too
                )  # fmt: skip
            except StoppedError:
                shutil.rmtree(self.work, ignore_errors=True)  # what a SIGKILL left of it
                self._unless_stopped()
                raise
            self.logs.mkdir(parents=True, exist_ok=True)
            gitconfig.write_config_file(self.logs / "gitconfig", dict(self.a.identity))
            tip = git.rev_parse_in(self.work, "HEAD")
            if tip is None:
                raise GitError(f"the clone of {self.a.task.branch} has no HEAD")
            return tip

    def _unless_stopped(self) -> None:
        """Fail :meth:`prepare` once the attempt was stopped or discarded."""
        if self._stopping.is_set():
            raise SwarmError(
                f"stopped on node {self.node()} while its clone of {self.a.task.branch} was made"
            )

    def _mirror(self) -> Path:
        """The node's mirror of the remote, made or brought up to date under its lock.

        Its git is ended with this actor (as the clone's); what one killed half-way left is
        settled first (:func:`_settle_mirror`), and a mirror is made apart and moved into
        place once whole: one with a HEAD is complete.
        """
        key = hashlib.sha256(self._remote.url.encode()).hexdigest()[:16]
        mirrors = node_dir() / "mirrors"
        mirrors.mkdir(parents=True, exist_ok=True)
        mirror = mirrors / f"{key}.git"
        making = mirrors / f"{key}.git.new"
        marked = {**self._remote.env, MIRROR_MARK: str(mirror)}  # told apart from yours
        with FileLock(str(mirrors / f"{key}.lock")):
            _settle_mirror(mirror, making)
            if not (mirror / "HEAD").exists():
                shutil.rmtree(mirror, ignore_errors=True)
                making.mkdir()  # its git's directory: where a leftover of it is found
                runner.run(
                    making,
                    *self._remote.args,
                    "clone", "--quiet", "--bare", "--", self._remote.url, str(making),
                    env=marked,
                    tied=True,
                )  # fmt: skip
                runner.run(making, "config", "gc.auto", "0")
                making.rename(mirror)
            else:
                runner.run(
                    mirror,
                    *self._remote.args,
                    "fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/heads/*",
                    env=marked,
                    tied=True,  # Ray kills this actor's worker without a word: git goes too
                )  # fmt: skip
        return mirror

    def finish(self, *, message: str) -> str | None:
        """Checkpoint the clone and push it to the task's branch; the pushed tip.

        The attempt's trailers follow *message*, whoever asks (its coordinator, `swarm stop`).
        None when its agent never started (stopped in its clone or setup): nothing is its
        work, and git's own files have no baseline to be put back to, so nothing is pushed.
        """
        self._ended.set()
        if self._pusher is not None:
            self._pusher.join()
        if self._agent is None:
            return None
        self._end_leftovers()  # nothing writes on in the clone as it is committed
        with self._git_lock:
            self._settle_git_files()
            # Its agent's `git checkout main` (the clone has every branch of the remote): the
            # commit, force-pushed to the task's branch, would have carried that history.
            self._switched = gitfiles.put_back_on(self.work, self.a.task.branch) or self._switched
            try:
                checkpoints.checkpoint(
                    self.work,
                    message=message + self._trailers(),
                    author=self.a.author,
                    droppings=adapter_for(self.a.task.agent).droppings,
                    report_secrets=True,
                    max_file=self.a.max_file,
                    agent_ran=True,  # its agent started in this clone
                    branch=self.a.task.branch,
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

    def _end_leftovers(self) -> None:
        """Kill what the agent left running when its shim died before ending it (SIGKILL, OOM).

        As a local manager does once an agent ends (:func:`proc_scan.kill_left_by`): marked
        with its shim's record, or in the shim's group working in the clone in its session
        (started with its environment wiped, ``env -i``). Nothing when its shim cleaned up.
        """
        record = None if self._agent is None else self._agent.record
        if record is not None:
            proc_scan.kill_left_by(record, grace=self.a.kill_grace, within=(self.work,))

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

        A clone still being made, or a setup or check step still running (its coordinator
        died meanwhile), is stopped first (a step's whole tree) and waited for.
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

    def _push(self, commit: str) -> None:
        # The branch is this task's alone; a snapshot pushed meanwhile is superseded.
        ref = f"+{commit}:refs/heads/{self.a.task.branch}"
        runner.run(
            self.work,
            *self._remote.args,
            "push", "--quiet", "--no-verify", self._remote.url, ref,
            env=self._remote.env,
        )  # fmt: skip

    def _push_periodically(self) -> None:
        # A wait past threading's limit raises (OverflowError): the pusher would end unseen.
        every = min(self.a.checkpoint_interval, threading.TIMEOUT_MAX)
        while not self._ended.wait(every):
            self._push_running()

    def _push_running(self) -> None:
        """One running checkpoint; a failure is noted (the agent works on, the next one retries)."""
        with self._git_lock:
            if self._ended.is_set():
                return
            streaks, failing = self._push_failure
            try:
                pushed = self._snapshot()
            except Exception as exc:  # noqa: BLE001 - any: the remote gone, its auth, the disk
                why = str(exc).strip().splitlines()
                reason = redact.redact(why[0] if why else type(exc).__name__)
                self._push_failure = (streaks if failing else streaks + 1, reason)
            else:
                if pushed:
                    self._push_failure = (streaks, "")

    def submodule_work(self) -> list[str]:
        """Submodule directories of the clone holding work no commit can record."""
        return status.submodule_work(self.work)

    def planted(self) -> list[str]:
        """Git's own files of the clone the agent changed (each put back before swarm's git)."""
        return list(self._planted)

    def switched(self) -> str | None:
        """Where its agent left the clone's HEAD off the task's branch (put back), or None."""
        return self._switched

    def _settle_git_files(self) -> None:
        """Put git's own files of the clone back as cloned, noting what the agent changed.

        Repository files are code (a planted ``url.*.insteadOf`` would redirect the push, a
        hook or filter run it): an agent's write to them is an outside write, even in its own
        clone, and is undone before swarm runs git there.
        """
        dotgit = self.work / ".git"
        now = surface.read(dotgit, ())
        labels = surface_diff.changed(self._surface, now)
        if surface.RERERE in labels and surface_diff.rerere_made(self.work, self._surface, now):
            labels.remove(surface.RERERE)  # git's own on any commit (a node's config turns it on)
            self._surface[surface.RERERE] = now[surface.RERERE]
        if labels:
            surface_restore.put_back(dotgit, self._surface, labels, now)
            self._planted += [label for label in labels if label not in self._planted]

    def _trailers(self) -> str:
        return checkpoints.trailers(self.a.task.id, self.a.attempt, self.a.task.agent)

    def _snapshot(self) -> bool:
        """Push the clone's files as a commit on top of the task's branch; whether it had any.

        The agent's index and HEAD are left alone: on a branch it switched to, that branch's
        history is never pushed as the task's (its attempt's checkpoint puts HEAD back).
        """
        branch = f"refs/heads/{self.a.task.branch}"
        self._settle_git_files()
        head = git.rev_parse_in(self.work, branch)
        if head is None:  # deleted by its agent: its attempt's own checkpoint puts it back
            return False
        # Hashed apart: what it leaves out is in no object of the clone's either. Its index is
        # in that store too: killed half-way, it goes with the next snapshot's sweep.
        with quarantine.apart(self.work, self.work / ".git") as apart:
            # `write-tree` rewrites the index: none of the clone's shared ones deleted.
            index = {
                "GIT_INDEX_FILE": str(apart.index),
                **quarantine.keeping_shared_indexes(),
            }
            env = {**index, **apart.env}
            runner.run(self.work, "read-tree", head, env=env)
            added = runner.run_names(self.work, "add", "--all", "--verbose", env=env).stdout
            # A file holding a secret's value is never pushed, not even for a minute, nor one
            # over max_file: the attempt's own checkpoint leaves them out too, and fails the
            # task saying so.
            secret = staged.unstage_secrets(self.work, env=env)
            big = staged.unstage_over(self.work, added, self.a.max_file, env=env)
            # Only what the index still names moves in, once something was left out.
            apart.move_in(staged.named_blobs(self.work, env=env) if secret or big else None)
            tree = runner.run(self.work, "write-tree", env=index).stdout.strip()
            if tree == git.rev_parse_in(self.work, f"{head}^{{tree}}"):
                return False
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
        return True


# In the environment of swarm's git of a node's mirror (its path): what a killed actor left.
MIRROR_MARK = "SWARM_MIRROR"


def _settle_mirror(mirror: Path, making: Path) -> None:
    """Undo what a git killed in the node's mirror left, under the mirror's lock.

    Every git swarm runs in the mirror runs there under that lock: one still at work is a
    leftover of an actor killed meanwhile (a hung fetch held its ref locks for ever), ended
    here; it is told by the mark in its environment (:data:`MIRROR_MARK`, which its helpers
    and hooks inherit), never by its name: a git of yours in the mirror is left alone. Every
    lock file is stale (a git killed in its ref update: every later fetch failed on it). A
    mirror half-made is removed, as are the temporary packs of a fetch cut short (the mirror
    is never gc'ed).
    """
    left = []
    for place in (mirror, making):
        for process in proc_scan.processes_in(place) if place.is_dir() else []:
            with contextlib.suppress(psutil.Error):
                if process.environ().get(MIRROR_MARK) == str(mirror):
                    process.kill()
                    left.append(process)
    psutil.wait_procs(left, timeout=10)
    shutil.rmtree(making, ignore_errors=True)
    if not mirror.is_dir():
        return
    stale = [*mirror.glob("*.lock"), *(mirror / "refs").rglob("*.lock")]
    for path in [*stale, *(mirror / "objects" / "pack").glob("tmp_*")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
