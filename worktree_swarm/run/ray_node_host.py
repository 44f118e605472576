"""A Ray node itself, apart from any one attempt: its directory and name, what runs left there.

Where a node keeps its mirrors and clones (``SWARM_NODE_DIR``) and the name it goes by, whether
bubblewrap can sandbox agents on it, the task directories runs left on it (for doctor and clean),
and ending an attempt whose actor stopped answering: its processes killed, its clone removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import psutil

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.guard import sandbox
from worktree_swarm.infra import disk, fs, proc_scan, proctree

# Where a node keeps its mirrors and clones, and the name `swarm status` shows for it. Both come
# from the environment of the node's `ray start` (the actor's worker inherits it).
NODE_DIR_ENV = "SWARM_NODE_DIR"
NODE_NAME_ENV = "SWARM_NODE_NAME"
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
    *grace*), and so is the group of a shim killed meanwhile where a member works in the
    clone in its session (:func:`proc_scan.kill_left_in`). Then the clone and the logs go,
    as :meth:`NodeAgent.discard` would have done (the task's work is on the remote up to
    its last push).
    """
    run_dir = node_dir() / "runs" / run_id
    task_dir = run_dir / task_id
    if task_dir.parent != run_dir or task_id in {"", ".", ".."}:
        raise SwarmError(f"not a task of run {run_id}: {task_id!r}")
    logs = task_dir / f"logs-{attempt}"
    _end_actor(logs / ACTOR_FILE)
    proc_scan.kill_left_in(logs, grace=grace, within=(task_dir / "work",))
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


def make_dirs(path: Path, *, tries: int = 3) -> None:
    """``mkdir -p`` *path*, again if another attempt's end removed a parent meanwhile.

    An attempt that ends removes its run's directory when it is empty: a sibling attempt
    making its own directories in it just then finds it gone between two of its steps.
    """
    for _ in range(tries - 1):
        with contextlib.suppress(FileNotFoundError):
            path.mkdir(parents=True, exist_ok=True)
            return
    path.mkdir(parents=True, exist_ok=True)
