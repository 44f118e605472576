"""One attempt's actor as the Ray coordinator holds it: placed, called, watched, taken down.

:class:`RayAttempts` is the part of the Ray executor's worker that deals with the actors
themselves: it joins the cluster and watches its head, places an attempt's actor on a node
with room on its disk, calls its methods (an actor gone or silent for ``lost_after`` is
lost), mirrors its log into the run directory, keeps its session files and its clone's size,
runs the task's checks on its node, takes it down, and moves the task's branch between this
repository and the remote the nodes share. What an attempt means for its task is
:mod:`worktree_swarm.run.ray_exec`'s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from worktree_swarm.agents import AgentResult, adapter_for
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.core.units import format_duration
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.infra import faults, fs, scrub
from worktree_swarm.infra.logtail import append_copy, copy_anew, read_log_end
from worktree_swarm.report import notes
from worktree_swarm.run import ray_session
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.disk_budget import REMEASURE_SECONDS
from worktree_swarm.run.ray_actors import (
    PROBE_GROUP,
    SLOT,
    NodeLostError,
    UnansweredError,
    actor_class,
    actor_name,
    end_attempt_if_named,
    first_line,
    namespace,
    node_side,
    on_every_node,
)
from worktree_swarm.run.ray_cluster import HeadWatch, connect, ray_module
from worktree_swarm.run.ray_disk import NodeDisk
from worktree_swarm.run.ray_node_clone import Assignment
from worktree_swarm.run.ray_preflight import remote_url
from worktree_swarm.run.run_worker import Live, RunContext, RunWorker, TaskOutcome

POLL_SECONDS = 0.5
# What one look copies of a running agent's log at most (the rest at the next looks).
MIRROR_BYTES = 16 << 20
STATUS_MEASURE_SECONDS = 30.0
NO_IDENTITY = ProcessIdentity(pid=0, create_time=0.0, pgid=0)
# How long a node may take to kill what a silent attempt started there.
END_ATTEMPT_SECONDS = 120.0
# Ray kills a worker's children with SIGKILL as the worker exits (its raylet lost, a
# `ray.kill`): the agent's shim among them, which then cannot end the agent's tree, and the
# agent works on with no one to stop it. Off in the actors' workers: the shim sees its actor
# gone (its ``--parent``) and ends the tree itself, grace then SIGKILL.
_ACTOR_ENV = {"RAY_kill_child_processes_on_worker_exit": "false"}


def _kill_named(actor: Any, name: str, space: str) -> None:  # noqa: ANN401 - a Ray handle
    """Kill *actor* and wait (up to 30 s) until its *name* is free in *space*."""
    ray = ray_module()
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=space)
        except Exception:  # noqa: BLE001 - freed (ValueError), or the cluster is going
            return
        time.sleep(POLL_SECONDS)


@dataclass(slots=True, kw_only=True)
class Handle:
    """One attempt's actor as the coordinator holds it."""

    actor: Any
    task_id: str
    number: int
    attempt_id: int
    started_at: float
    log_path: Path
    node: str
    offset: int = 0
    measured_at: float = 0.0  # monotonic time of its clone's last measurement
    session_at: float = 0.0  # monotonic time its session files were last asked for
    session_fp: str | None = None  # the fingerprint of the session files kept last
    session_id: str | None = None
    push_failures: int = 0  # the streaks of failed running checkpoints told so far
    # What the agent said it used, once its attempt ended: recorded even when what follows
    # (its checkpoint, the push) fails the attempt; *counted*: its end is on record, what
    # it used added to its task's totals with it (never rewritten, nor counted again).
    used: AgentResult | None = None
    counted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Throttled:
    """An attempt that ended on a rate limit, and whether it changed the work first."""

    result: AgentResult
    progressed: bool
    replayed: bool = False  # a previous coordinator's attempt
    counted: bool = False  # replayed, its wait decided: its retry is counted in the course
    window: bool | None = None  # replayed: whether its limit was a usage window, as recorded
    told: bool = False  # its stream told the gate of a throttle while it ran


# How an attempt ended: the task's outcome, checks that failed, or a rate limit.
Ended = TaskOutcome | CheckFailure | Throttled


class RayAttempts(RunWorker):
    """The Ray coordinator's hold on the actors of its attempts (see the module)."""

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self.url = remote_url(run.repo, run.spec.remote)
        connect(run.spec.ray_address, lost_after=run.spec.lost_after)
        self._git_lock = threading.Lock()
        self.disk = NodeDisk(repo=run.repo, spec=run.spec, store=run.store, run_id=run.run_id)
        gcs = str(ray_module().get_runtime_context().gcs_address)
        self.head = HeadWatch(gcs, run.spec.ray_address or gcs, lost_after=run.spec.lost_after)

    def close(self) -> None:
        """Stop watching the cluster's head (actors carry on)."""
        self.head.close()

    def halted(self) -> str | None:
        """Why no task can go on now: the cluster is lost; else None."""
        return self.head.lost

    def _assignment(self, task: Task, number: int) -> Assignment:
        return Assignment(
            run_id=self.run_id,
            task=task,
            attempt=number,
            remote_url=self.url,
            author=self.spec.commit_author,
            # The user's excludes file is a path on this machine, not on the node.
            identity=tuple(
                (k, v) for k, v in self._git_identity.items() if k != "core.excludesFile"
            ),
            kill_grace=self.spec.kill_grace,
            checkpoint_interval=self.spec.checkpoint_interval,
            max_file=self.spec.max_file,
            max_log=self.spec.max_log,
            sandbox=self.spec.sandbox,
            sandbox_writable=self.spec.sandbox_writable,
            findings=self._shared_findings(),
        )

    def _shared_findings(self) -> str:
        """The run's findings as they are, for an agent on a node ("" if unreadable)."""
        try:
            return notes.read_notes(self._findings)
        except SwarmError:
            return ""

    def _actor(self, assignment: Assignment) -> Any:  # noqa: ANN401 - a Ray actor handle
        """The actor of one attempt, placed on a node with a free agent slot."""
        return (
            actor_class()
            .options(
                name=actor_name(assignment.task.id, assignment.attempt),
                namespace=namespace(self.run_id),
                lifetime="detached",
                max_restarts=0,
                max_task_retries=0,
                max_concurrency=2,  # a stop reaches it while its checks run
                num_cpus=0,
                memory=self.spec.ray_memory,
                resources={SLOT: 1},
                scheduling_strategy="SPREAD",
                runtime_env={"env_vars": _ACTOR_ENV},
            )
            .remote(assignment)
        )

    def _admit(self, live: Live, actor: Any, node: str) -> None:  # noqa: ANN401
        """Wait until the task's clone fits under ``max_disk`` on *node* (ray_disk.py)."""
        task = live.task
        row = self.store.task(self.run_id, task.id)
        start = row.base_commit if row is not None and row.base_commit else self.base_commit

        def waiting(reason: str) -> None:
            self._state(task.id, TaskState.PENDING if reason else TaskState.RUNNING, reason=reason)

        admitted = self.disk.admit(
            node,
            task,
            start=start,
            held=lambda skip: int(self._call(actor, "held", skip, live=live)),
            stop=live.stop,
            waiting=waiting,
        )
        if not admitted:
            raise NodeLostError("stopped while waiting for disk")

    def _periodic(self, handle: Handle, live: Live) -> None:
        """While the agent runs: measure its clone, keep its session files, when due."""
        # Often when max_disk waits on it, else only for `swarm status`: a walk of a big clone
        # (node_modules) is not free.
        every = REMEASURE_SECONDS if self.spec.max_disk is not None else STATUS_MEASURE_SECONDS
        if time.monotonic() - handle.measured_at > every:
            self._measure(handle, live)
        if time.monotonic() - handle.session_at > max(self.spec.checkpoint_interval, 1.0):
            self._keep_session(handle, live)  # what a lost node would otherwise take along

    def _restore_session(self, live: Live, actor: Any) -> str | None:  # noqa: ANN401
        """Give the new attempt's node the session kept last; its id, or None (a fresh one)."""
        if adapter_for(live.task.agent).name not in ray_session.CARRIED:
            return None
        kept = ray_session.load(self._logs_root / live.task.id / "session")
        if kept is None or kept[1] is None:
            return None
        state, session_id = kept
        restored = self._call(actor, "restore_session", state, live=live)
        return session_id if restored else None

    def _keep_session(self, handle: Handle, live: Live) -> None:
        """Keep the attempt's session files in the run's directory, if they changed."""
        adapter = adapter_for(live.task.agent)
        if adapter.name not in ray_session.CARRIED:
            return
        handle.session_at = time.monotonic()
        since = handle.session_fp
        state = self._call(handle.actor, "session_state", since, live=live)
        if state is None:
            return
        if handle.session_id is None:  # the stream's first lines name it
            text = read_log_end(handle.log_path, 8 * 2**20)
            handle.session_id = adapter.interpret(
                exit_code=None, log_text=text, now=time.time()
            ).session_id
        if handle.session_id is None:
            return
        directory = self._logs_root / live.task.id / "session"
        ray_session.save(directory, state, session_id=handle.session_id)
        handle.session_fp = state.fingerprint

    def _kept_from_node(self, handle: Handle, live: Live) -> None:
        """What an ended attempt leaves on its node that the run keeps.

        Its clone's size, its session, and what its agent noted (appended to the run's
        findings file, where the agents of later attempts and `swarm notes` find it).
        """
        self._measure(handle, live)
        self._keep_session(handle, live)
        added = self._call(handle.actor, "notes_added", live=live)
        if added:
            faults.retry_while_full(
                lambda: notes.merge_in(self._findings, added), self.store.on_full
            )

    def _measure(self, handle: Handle, live: Live) -> None:
        """Have the actor measure its clone; recorded, and counted on its node."""
        handle.measured_at = time.monotonic()
        self.disk.measured(
            handle.node, handle.task_id, self._call(handle.actor, "disk_use", live=live)
        )

    def _check(self, live: Live, handle: Handle, base: str) -> CheckFailure | None:
        """Run the task's checks on the attempt's node, if it has any."""
        task = live.task
        if not (task.checks or task.expect_files or task.no_placeholders):
            return None
        self._state(task.id, TaskState.CHECKING)
        failure, text = self._call(
            handle.actor, "check", base=base, live=live, on_stop=handle.actor.stop.remote
        )
        self._append_log(task, "checks.log", text)
        return cast("CheckFailure | None", failure)

    def _append_log(self, task: Task, name: str, text: str) -> None:
        """Add what a step wrote on the node to the run directory's log *name* (redacted)."""
        log = self._logs_root / task.id / name
        log.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_append(log) as fh:
            fh.write(text)
        scrub.scrub_file(log)

    def _retire(self, handle: Handle, *, silent: bool = False) -> None:
        """Have the attempt's actor remove its clone, and take it down.

        One known to be *silent*, or that does not answer now, is taken down without it
        (:meth:`_silence`).
        """
        ray = ray_module()
        if self.head.lost is not None:  # gone with its node, with the cluster
            self.disk.released(handle.node, handle.task_id)
            return
        if not silent:
            try:
                ray.get(handle.actor.discard.remote(), timeout=30)
            except ray.exceptions.GetTimeoutError:
                silent = True
            except Exception:  # noqa: BLE001, S110 - gone: nothing left to discard
                pass
        if silent:
            self._silence(handle.actor, handle.task_id, handle.number, handle.node)
            return
        with contextlib.suppress(Exception):  # a gone actor has nothing left to kill
            ray.kill(handle.actor)
        self.disk.released(handle.node, handle.task_id)  # its clone is gone from there

    def _mirror(self, handle: Handle, live: Live, *, whole: bool = False) -> None:
        """Append what the agent logged since the last call to the local copy of its log.

        Redacted on the node (its own secrets) and here (the run's), a line at a time: the
        copy never holds a secret of one line, whatever ends the attempt (one over several
        lines, a PEM key, once it ends: :meth:`_recopy`). How far the node's log has been read,
        and the copy's size then, are kept beside the copy (the two differ by the
        redactions), for a coordinator that adopts the attempt after a crash. While the agent
        runs (*whole* false) at most MIRROR_BYTES a call: one printing faster than the copy
        is made would hold the watch here, its timeouts, `max_log` and stops unlooked at.
        """
        copied = 0
        while whole or copied < MIRROR_BYTES:
            read_to, chunk = self._call(handle.actor, "tail", handle.offset, live=live)
            if read_to == handle.offset:
                return
            copied += read_to - handle.offset
            append_copy(handle.log_path, read_to, chunk)
            handle.offset = read_to

    def _recopy(self, handle: Handle, live: Live) -> None:
        """Copy the ended attempt's log again, once the node has redacted it whole.

        Put in the copy's place once whole (:func:`copy_anew`): its node lost meanwhile, what
        was copied before is kept.
        """
        self._call(handle.actor, "scrub_log", live=live)
        handle.offset = copy_anew(
            handle.log_path, lambda offset: self._call(handle.actor, "tail", offset, live=live)
        )

    def _call(
        self,
        actor: Any,  # noqa: ANN401 - a Ray actor handle
        method: str,
        *args: object,
        live: Live,
        placing: bool = False,
        once: bool = False,
        on_stop: Callable[[], object] | None = None,
        **kwargs: object,
    ) -> Any:  # noqa: ANN401
        """The result of *actor*'s *method* (*args*, *kwargs*); NodeLostError when it is lost.

        An actor that cannot be reached is asked again (the methods are idempotent, except
        *once*: then it is lost at once) until it answers, Ray declares it dead, or
        ``lost_after`` passes. One that Ray still counts alive but that does not answer (its
        process or its node hangs) is lost the same way (:class:`UnansweredError`): a call
        may work for long (a clone, checks), so while it runs the actor is probed in a
        concurrency group of its own, and only ``lost_after`` without an answer to the call
        or a probe is silence. While *placing* (the actor waits for a free slot, which may take
        any time) a stop of the task ends the wait (None); otherwise a stop calls *on_stop*
        once.
        """
        ray = ray_module()
        exceptions = ray.exceptions
        self.head.check()
        since = heard = time.monotonic()
        ref = getattr(actor, method).remote(*args, **kwargs)
        probe: Any = None
        while True:
            self.head.check()
            try:
                return ray.get(ref, timeout=POLL_SECONDS * 4)
            except exceptions.GetTimeoutError:
                if placing:
                    if live.stop.is_set():
                        return None
                    continue
                if on_stop is not None and live.stop.is_set():
                    on_stop()  # e.g. checks that run on: stopped on their node
                    on_stop = None
                probe, heard = self._pulse(actor, probe, heard)
            except exceptions.ActorUnavailableError:
                if once or time.monotonic() - since > self.spec.lost_after:
                    raise NodeLostError("actor unreachable") from None
                time.sleep(POLL_SECONDS)
                ref, probe = getattr(actor, method).remote(*args, **kwargs), None
            except (exceptions.RayActorError, exceptions.NodeDiedError) as exc:
                raise NodeLostError(first_line(exc, "actor died")) from None
            except (exceptions.RayTaskError, exceptions.UnserializableException) as exc:
                raise node_side(exc) from None

    def _pulse(self, actor: Any, probe: Any, heard: float) -> tuple[Any, float]:  # noqa: ANN401
        """Probe *actor* while a call waits: (the probe now out, when the actor last answered).

        *probe* is the one sent before (or None), *heard* when the actor last answered. A probe
        runs in the actor's concurrency group of its own: busy methods do not hold it up, a
        hung process does. Raises :class:`UnansweredError` after ``lost_after`` of silence.
        """
        ray = ray_module()
        if probe is not None and ray.wait([probe], timeout=0)[0]:
            try:
                ray.get(probe)
                heard = time.monotonic()
            except ray.exceptions.ActorUnavailableError:  # unreachable for now: asked again
                pass
            except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError) as exc:
                raise NodeLostError(first_line(exc, "actor died")) from None
            probe = None
        if time.monotonic() - heard > self.spec.lost_after:
            silent = format_duration(self.spec.lost_after)
            raise UnansweredError(f"its actor did not answer for {silent}")
        if probe is None:
            probe = actor.node.options(concurrency_group=PROBE_GROUP).remote()
        return probe, heard

    def _silence(self, actor: Any, task_id: str, number: int, node: str) -> None:  # noqa: ANN401
        """Take down the actor of attempt *number* that stopped answering, and its processes.

        Ray kills the actor (so it never wakes up to push over a later attempt's work) and
        frees its name; then its node kills, tree and all, what the attempt started there
        (the agent, a setup step, checks: they run under shims of their own and outlive
        their actor) and removes its clone, before the task goes on.
        """
        _kill_named(actor, actor_name(task_id, number), namespace(self.run_id))
        if node:
            with contextlib.suppress(Exception):  # a node that hangs too: doctor finds it
                on_every_node(
                    end_attempt_if_named,
                    node,
                    self.run_id,
                    task_id,
                    number,
                    self.spec.kill_grace,
                    timeout=END_ATTEMPT_SECONDS + self.spec.kill_grace,
                )
        self.disk.released(node, task_id)

    # -- git ----------------------------------------------------------------------------------

    def _publish(self, task: Task, start: str) -> None:
        """Make the task's branch at *start*, here and on the remote."""
        with self._git_lock:
            if not git_branches.branch_exists(self.repo, task.branch):
                git.git(self.repo.root, "branch", "--no-track", task.branch, start)
            # No agent has run on it yet (its base is recorded only after this): a branch the
            # remote has from a crash here, or from before a fresh retry, is replaced.
            git.git(
                self.repo.root,
                "push", "--quiet", "--no-verify", "--", self.url,
                f"+{start}:refs/heads/{task.branch}",
            )  # fmt: skip

    def _fetch(self, task: Task) -> None:
        """Bring the task's branch from the remote into this repository."""
        with self._git_lock:
            git.git(
                self.repo.root,
                "fetch", "--quiet", "--no-tags", "--", self.url,
                f"+refs/heads/{task.branch}:refs/heads/{task.branch}",
            )  # fmt: skip


def size_of(path: Path) -> int:
    """The size of *path*, 0 when it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
