"""The manager lock: one `swarm run`/`resume` per repository at a time."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import filelock

from worktree_swarm.core.errors import ManagerLockedError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import fs, proctree

PROBE_GRACE = 1.0  # seconds a starting manager or merge waits for a probe to let go
MERGE_LOCK = "merge.lock"  # held by `swarm merge` in the state directory
# Beside the state directory, in the git dir: a manager holds it too, so that one whose state
# directory was deleted under it still holds the repository. A file, not the git dir itself,
# which a sandboxed agent can open (and lock, holding every later manager off): this file is
# hidden in the box.
GIT_DIR_LOCK = "swarm-manager.flock"


class ManagerLock:
    """Hold ``<state dir>/manager.lock``; the holder is described in ``manager.json``.

    The lock file itself is never deleted (deleting a held flock file lets a second
    process lock a new inode); ``manager.json`` only names the holder for error messages.
    :data:`GIT_DIR_LOCK` in the git dir holding the state directory is locked too: a state
    directory deleted under a live manager (``rm -rf .git/swarm``) must not let a second one
    start beside it.
    """

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self._lock = filelock.FileLock(state_dir / "manager.lock", thread_local=False)
        self._parent: int | None = None  # the git dir's descriptor while held

    def acquire(self, *, run_id: str | None = None, guarded: bool = True) -> None:
        """Take the lock or raise ManagerLockedError naming the holder's PID.

        *guarded*: whether this process runs a guard (a manager does; a stop or abandon of a
        run with no manager does not, and nobody is to wait for its verdicts).
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        try:
            # `manager_alive` (swarm status, swarm watch) takes the lock for an instant to
            # probe it: wait that out rather than refuse to start.
            self._lock.acquire(timeout=PROBE_GRACE)
        except filelock.Timeout:
            raise _held_by_another(self._dir) from None
        self._parent = _lock_dir(self._dir.parent, fcntl.LOCK_EX, wait=PROBE_GRACE, make=True)
        if self._parent == _UNLOCKABLE:  # (NFS, say) the lock file alone then
            self._parent = None
        elif self._parent is None:
            self._lock.release()
            raise _deleted_under_it(self._dir)
        ident = proctree.identity_of(os.getpid())
        info: dict[str, object] = {
            "pid": os.getpid(),
            "create_time": ident.create_time if ident else None,
        }
        if run_id is not None:
            info["run_id"] = run_id
        if not guarded:
            info["guarded"] = False
        tmp = self._dir / "manager.json.tmp"
        tmp.write_text(json.dumps(info), encoding="utf-8")
        tmp.replace(self._dir / "manager.json")

    def release(self) -> None:
        """Release the lock (the holder file stays, now stale, which readers detect)."""
        if self._parent is not None:
            os.close(self._parent)  # closing the descriptor drops its flock
            self._parent = None
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock.is_locked:
            self.release()


_WAL_WAIT = 2.0


def _alive_here(state_dir: Path) -> bool:
    """:func:`manager_alive`, False where its lock cannot even be probed (a read-only dir)."""
    try:
        return manager_alive(state_dir)
    except OSError:
        return False


def _held_by_another(state_dir: Path) -> ManagerLockedError:
    return ManagerLockedError(
        f"another swarm manager {describe_holder(state_dir)} holds this repository; "
        "wait for it, watch it with `swarm status`, or stop it with `swarm stop`"
    )


def refuse_while_managed(state_dir: Path) -> None:
    """ManagerLockedError (exit 3, naming the holder) while a manager holds the repository.

    For `swarm run` before its checks of branches: a live run's own tasks would otherwise be
    named as in the way (bad input), not the manager that holds them.
    """
    if not state_dir.exists():
        return  # no manager ever ran here, or its state was deleted: its lock says (acquire)
    if held(state_dir / "manager.lock"):
        raise _held_by_another(state_dir)
    if _alive_here(state_dir):  # the git dir's lock alone: the state was deleted under it
        raise _deleted_under_it(state_dir)


def _deleted_under_it(deleted: Path) -> ManagerLockedError:
    return ManagerLockedError(
        f"another swarm manager holds this repository, though {deleted} was deleted "
        "under it; wait for it to end (it writes its state back there)"
    )


def refuse_while_state_is_gone(state_dir: Path, store: Path) -> None:
    """ManagerLockedError when *store* is missing because it was deleted under a live manager.

    For the commands that open the store (`swarm resume`, `retry`, `status`, ...): that manager
    writes it back once it notices; until then they would say that there is no run here.
    """
    # Its write-ahead log deleted, the file alone is as of the last checkpoint (a store with
    # no tables at first), and a reader opening it would reset the log's index the manager
    # shares (its view of its own store lost): refused as well until it writes it back.
    # A manager that has just taken its lock opens the store (making the log) at once, and
    # one whose log was deleted writes the store back within a quarter of a second: waited for.
    wal = store.with_name(store.name + "-wal")
    deadline = time.monotonic() + _WAL_WAIT
    while not store.exists() and manager_alive(state_dir):
        if time.monotonic() >= deadline:
            raise _deleted_under_it(state_dir)
        time.sleep(0.05)
    while store.exists() and not wal.exists() and _alive_here(state_dir):
        if time.monotonic() >= deadline:
            raise _deleted_under_it(wal)
        time.sleep(0.05)


def _holder(state_dir: Path) -> dict[str, object]:
    try:
        info = json.loads(fs.read_file(state_dir / "manager.json"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_holder(state_dir: Path) -> str:
    """``(pid N, run R)`` from manager.json, or ``(pid unknown)``."""
    info = _holder(state_dir)
    if "pid" not in info:
        return "(pid unknown)"
    run = f", run {info['run_id']}" if info.get("run_id") else ""
    return f"(pid {info['pid']}{run})"


def holder_run(state_dir: Path) -> str | None:
    """The run the process that last took the manager lock named (None: a new run, or none)."""
    run = _holder(state_dir).get("run_id")
    return run if isinstance(run, str) else None


def _named_holder_alive(state_dir: Path) -> bool:
    """Whether the process ``manager.json`` names (the last to take the lock) is alive.

    Every process of swarm's that takes the lock names itself there at once. A lock held while
    that process is gone is held by none of swarm's (an agent outside --sandbox that took it
    once its manager died): no manager, so `swarm stop` stops the run's agents (that one among
    them). With no record at all there is no telling: held counts as alive.
    """
    for look in range(2):
        info = _holder(state_dir)
        pid, started = info.get("pid"), info.get("create_time")
        if not isinstance(pid, int) or not isinstance(started, int | float):
            return True
        if proctree.is_alive(ProcessIdentity(pid=pid, create_time=float(started), pgid=0)):
            return True
        if look == 0:
            time.sleep(_NEW_HOLDER)  # a new holder names itself just after it locks
    return False


_NEW_HOLDER = 0.25


def holder_pid(state_dir: Path) -> int | None:
    """The PID that last took the manager lock (check `manager_alive` for whether it holds it)."""
    pid = _holder(state_dir).get("pid")
    return pid if isinstance(pid, int) else None


@contextlib.contextmanager
def merge_lock_if_free(state_dir: Path) -> Iterator[bool]:
    """Hold the merge lock unless a `swarm merge` holds it (waiting out a probe); whether held."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(state_dir / MERGE_LOCK, thread_local=False)
    try:
        lock.acquire(timeout=PROBE_GRACE)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def manager_alive(state_dir: Path) -> bool:
    """Whether a manager (a process of swarm's) holds the manager lock right now."""
    if held(state_dir / "manager.lock"):
        return _named_holder_alive(state_dir)
    probe = _lock_dir(state_dir.parent, fcntl.LOCK_SH, wait=0)
    if probe is None:
        return (state_dir.parent / GIT_DIR_LOCK).exists()
    if probe != _UNLOCKABLE:
        os.close(probe)
    return False


def other_manager(state_dir: Path) -> str | None:
    """``(pid N, run R)`` of a manager other than this process holding the lock now, else None."""
    if _holder(state_dir).get("pid") == os.getpid() or not manager_alive(state_dir):
        return None
    return describe_holder(state_dir)


def guard_alive(state_dir: Path) -> bool:
    """Whether a manager holding the lock runs a guard (:func:`manager_alive`, and not a stop).

    A process that took the lock without a guard says so in ``manager.json``; looked at twice
    when it does, since a new holder names itself just after it locks.
    """
    if not manager_alive(state_dir):
        return False
    for look in range(2):
        if _holder(state_dir).get("guarded", True) is not False:
            return True
        if look == 0:
            time.sleep(_NEW_HOLDER)
    return False


_UNLOCKABLE = -1  # what _lock_dir returns where files cannot be locked


def _lock_dir(path: Path, mode: int, *, wait: float, make: bool = False) -> int | None:
    """An open descriptor of :data:`GIT_DIR_LOCK` in directory *path* holding flock *mode*.

    None while it is taken, or (unless *make*) when it or *path* does not exist;
    ``_UNLOCKABLE`` where the file system cannot lock it.

    Retried for *wait* seconds: a probe (``manager_alive``) holds it shared for an instant.
    """
    try:
        fd = os.open(path / GIT_DIR_LOCK, os.O_RDONLY | (os.O_CREAT if make else 0), 0o644)
    except FileNotFoundError:
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
            continue
        except OSError:  # a file system that cannot lock (some NFS): not held
            os.close(fd)
            return _UNLOCKABLE
        return fd


def merge_running(state_dir: Path) -> bool:
    """Whether a `swarm merge` holds this repository's merge lock right now."""
    return held(state_dir / MERGE_LOCK)


def held(path: Path) -> bool:
    """Whether some process holds the lock file *path* (never made here when missing).

    The probe holds it for an instant: whoever takes it waits ``PROBE_GRACE`` for that.
    """
    if not path.exists():
        return False
    probe = filelock.FileLock(path, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release()
    return False
