"""Who may have done it: which agents ran when, and where their processes are."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import shim

_MTIME_SLACK = 1.0


@dataclass(slots=True, kw_only=True)
class _Agent:
    intervals: list[list[float | None]] = field(default_factory=list)
    identity: ProcessIdentity | None = None


class Agents:
    """When each task's agent ran, and its process while it runs. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # not the scan's lock: starting never waits on it
        self._agents: dict[str, _Agent] = {}

    def started(self, task_id: str, identity: ProcessIdentity) -> None:
        """Note that *task_id*'s agent runs from now on."""
        with self._lock:
            agent = self._agents.setdefault(task_id, _Agent())
            agent.intervals.append([time.time(), None])
            agent.identity = identity

    def ended(self, task_id: str) -> None:
        """Note that *task_id*'s agent has ended."""
        with self._lock:
            agent = self._agents.get(task_id)
            if agent and agent.intervals and agent.intervals[-1][1] is None:
                agent.intervals[-1][1] = time.time()
                agent.identity = None

    def suspects(self, window: tuple[float, float], *, exclude: Sequence[str]) -> tuple[str, ...]:
        """The agents (but *exclude*) alive at some time within *window*."""
        start, end = window
        found = []
        # Read under the lock, not from a copy of every agent: one copy per call made each
        # scan and each attempt's check cost O(agents ever run) in allocations.
        with self._lock:
            for task_id, agent in self._agents.items():
                if task_id in exclude:
                    continue
                for began, ended in agent.intervals:
                    if began is not None and began <= end and (ended is None or ended >= start):
                        found.append(task_id)
                        break
        return tuple(sorted(found))

    def alive_around(self, when: float, *, exclude: Sequence[str]) -> tuple[str, ...]:
        """The agents (but *exclude*) alive within the mtime slack of *when* (a file's mtime)."""
        return self.suspects((when - _MTIME_SLACK, when + _MTIME_SLACK), exclude=exclude)

    def narrow(
        self, suspects: tuple[str, ...], root: Path, paths: Sequence[str]
    ) -> tuple[str, ...]:
        """Suspects with a process in *root* now, else those alive when the files changed."""
        agents = self._now()
        inside = []
        for task_id in suspects:
            identity = agents[task_id].identity
            if identity is not None and has_process_in(identity, root):
                inside.append(task_id)
        if inside:
            return tuple(inside)
        mtimes = []
        for rel in paths:
            with contextlib.suppress(OSError):
                mtimes.append((root / rel).lstat().st_mtime)
        if not mtimes:
            return ()
        alive = []
        for task_id in suspects:
            spans = agents[task_id].intervals
            if any(
                (b or 0) - _MTIME_SLACK <= m <= (e or float("inf")) + _MTIME_SLACK
                for m in mtimes
                for b, e in spans
            ):
                alive.append(task_id)
        return tuple(alive)

    def none_alive_then(self, suspects: tuple[str, ...], root: Path, paths: Sequence[str]) -> bool:
        """Whether no suspect was alive when the files at *paths* last changed.

        Each file's modification and status-change times count: an agent can set the first
        (``touch -d``), not the second. False when no file is there to tell (all deleted).
        """
        times = []
        for rel in paths:
            with contextlib.suppress(OSError):
                found = (root / rel).lstat()
                times += [found.st_mtime, found.st_ctime]
        agents = self._now()
        return bool(times) and not any(
            (b or 0) - _MTIME_SLACK <= when <= (e or float("inf")) + _MTIME_SLACK
            for task_id in suspects
            for b, e in agents[task_id].intervals
            for when in times
        )

    def owner_of(self, pid: int) -> str | None:
        """The task whose running agent *pid* is, or descends from (None: no agent's).

        An agent's identity is its shim's, a child subreaper: a daemon it double-forks is
        re-parented to the shim and still descends from it.
        """
        running = {a.identity.pid: t for t, a in self._now().items() if a.identity is not None}
        try:
            chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
        except psutil.Error:
            return None
        for process in chain:
            if process.pid in running:
                return running[process.pid]
        return None

    def _now(self) -> dict[str, _Agent]:
        with self._lock:
            return {
                t: _Agent(intervals=[list(i) for i in a.intervals], identity=a.identity)
                for t, a in self._agents.items()
            }


def task_program(pid: int, state_dir: Path) -> str | None:
    """Why *pid* is a program swarm started for a task, or left behind by one (None: not so).

    Such a program is below this process (the manager, or the `swarm merge` whose guard
    asks): the server that forks the shims is its child, and takes in what an agent that
    killed its own shim leaves. Or it carries the ``SWARM_SHIM`` mark of a shim whose record
    is in *state_dir*, wherever it went. Which task it is, neither tells for sure (the mark
    can be set to another's), nor whether the process is swarm's own command: that runs in
    this process, or is the user's, in neither place.
    """
    try:
        process = psutil.Process(pid)
        if os.getpid() in {p.pid for p in process.parents()}:
            return "was started under swarm's own process, for a task"
        mark = process.environ().get(shim.ENV_VAR)
    except (psutil.Error, OSError):
        return None
    own = Path(os.path.realpath(state_dir))
    if mark and Path(os.path.realpath(mark)).is_relative_to(own):
        return "descends from a task's shim"
    return None


def has_process_in(identity: ProcessIdentity, root: Path) -> bool:
    """Whether the process tree of *identity* has a process whose cwd is inside *root*."""
    real = Path(os.path.realpath(root))
    try:
        top = psutil.Process(identity.pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return False
    for p in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if Path(p.cwd()).is_relative_to(real):
                return True
    return False
