"""Spawn, track and stop agent processes.

Each agent runs under a shim (:mod:`worktree_swarm.infra.shim`) in a session of its own. The
handles here wait for it, watch its log and stop its whole tree; a process is known by its
identity, never its PID alone (see :mod:`worktree_swarm.infra.proctree`).
"""

from __future__ import annotations

import enum
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import fs, shim, shim_record
from worktree_swarm.infra.logtail import last_line
from worktree_swarm.infra.proctree import (
    KILL_TIMEOUT,
    identity_of,
    is_alive,
    kill_tree,
    learn_secrets,
)
from worktree_swarm.infra.shim_record import read_record, record_path
from worktree_swarm.infra.shim_server import Forked, ShimServer, not_started

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

_STEP_POLL = 0.1
SHIM_AVAILABLE = shim_record.SHIM_AVAILABLE


@dataclass(slots=True)
class AgentProcess:
    """A live agent started by :func:`spawn`.

    ``popen`` reaps it when it is this process's child; a shim forked by a
    :class:`ShimServer` is not (``popen`` is None), and its command's exit code is read
    from the shim's record. ``workdir``: where it was started (see :func:`kill_tree`).
    """

    identity: ProcessIdentity
    popen: subprocess.Popen[bytes] | None
    log_path: Path
    started_at: float
    record: Path | None = None
    forked: Forked | None = None
    workdir: Path | None = None
    _log_size: int = field(default=0, init=False, repr=False)
    _last_growth: float = field(default=0.0, init=False, repr=False)

    def poll(self) -> int | None:
        """Return the exit code once the agent has exited (reaping it), else None."""
        if self.popen is None:
            return None if is_alive(self.identity) else self._recorded()
        return self._code(self.popen.poll())

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to *timeout* seconds; return the exit code, or None if still running."""
        if self.popen is None:
            if timeout is not None:
                _wait_for_end(self.identity, timeout)
            while timeout is None and is_alive(self.identity):
                _wait_for_end(self.identity, KILL_TIMEOUT)
            return self.poll()
        if timeout and self.popen.returncode is None and _until_ended(self.popen.pid, timeout):
            timeout = 0  # ended, or the time is up: reap it if it ended
        try:
            return self._code(self.popen.wait(timeout))
        except subprocess.TimeoutExpired:
            return None

    def _code(self, returned: int | None) -> int | None:
        # The shim's own exit code folds a signal into 128+N; its record has the exact status.
        if returned is None or self.record is None:
            return returned
        recorded = self._recorded()
        return returned if recorded is None else recorded  # None: the shim itself was killed

    def _recorded(self) -> int | None:
        recorded = None if self.record is None else read_record(self.record)
        if recorded is not None and recorded.exit_code is not None:
            return recorded.exit_code
        # No record (a full disk), or the shim was killed first: what the server reaped.
        return None if self.forked is None else self.forked.exit_code()

    def ended_at(self) -> float | None:
        """When its shim saw the command end (None: no record of it, or not ended).

        Not when the manager noticed: one stopped meanwhile (Ctrl-Z) would add its pause.
        """
        recorded = None if self.record is None else read_record(self.record)
        end = None if recorded is None else recorded.ended_at
        return end if end is not None and self.started_at <= end <= time.time() else None

    def stop(self, *, grace: float) -> int | None:
        """Kill the agent's whole process tree (see :func:`kill_tree`) and reap it."""
        kill_tree(self.identity, grace=grace, within=_dirs(self.workdir))
        return self.wait(KILL_TIMEOUT)

    def last_activity(self) -> float:
        """Return when the log last grew (``time.time()`` scale), or the start time."""
        try:
            st = self.log_path.stat()
        except FileNotFoundError:
            return max(self.started_at, self._last_growth)
        # mtime may be coarse (1s on some filesystems): also note when we saw the size change.
        if st.st_size != self._log_size:
            self._log_size = st.st_size
            self._last_growth = time.time()
        return max(self.started_at, st.st_mtime, self._last_growth)

    def idle_seconds(self) -> float:
        """Return seconds since the log last grew, or since the start."""
        return max(0.0, time.time() - self.last_activity())

    def last_line(self) -> str:
        """Return the last non-empty line of the log ('' if none), read from its tail."""
        return last_line(self.log_path)

    def alive(self) -> bool:
        """Whether the agent has not exited yet."""
        return is_alive(self.identity) if self.popen is None else self.popen.poll() is None


class Supervised(Protocol):
    """What the run loop needs of an agent, whether it spawned it or adopted it."""

    log_path: Path

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to *timeout* seconds; the exit code when known."""

    def alive(self) -> bool:
        """Whether the agent still runs."""

    def idle_seconds(self) -> float:
        """Seconds since its log last grew."""

    def stop(self, *, grace: float) -> int | None:
        """Kill its whole process tree."""


@dataclass(slots=True)
class AdoptedProcess:
    """An agent started by a previous manager: not our child.

    Its exit code is known only from its shim's record (see :mod:`worktree_swarm.infra.shim`).
    """

    identity: ProcessIdentity
    log_path: Path
    started_at: float
    record: Path | None = None
    workdir: Path | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to *timeout* (None: until it ends) for the process; its recorded exit code."""
        if timeout is not None:
            _wait_for_end(self.identity, timeout)
        while timeout is None and is_alive(self.identity):
            _wait_for_end(self.identity, KILL_TIMEOUT)
        if is_alive(self.identity) or self.record is None:
            return None
        recorded = read_record(self.record)
        return None if recorded is None else recorded.exit_code

    def alive(self) -> bool:
        """Whether the recorded process (pid and create time) still runs."""
        return is_alive(self.identity)

    def idle_seconds(self) -> float:
        """Seconds since the log last changed."""
        try:
            last = self.log_path.stat().st_mtime
        except FileNotFoundError:
            last = self.started_at
        return max(0.0, time.time() - max(last, self.started_at))

    def stop(self, *, grace: float) -> int | None:
        """Kill the whole tree."""
        kill_tree(self.identity, grace=grace, within=_dirs(self.workdir))
        return None


def _until_ended(pid: int, timeout: float, identity: ProcessIdentity | None = None) -> bool:
    """Block until the process *pid* ends or *timeout* passes; False without a pidfd.

    A pidfd (Linux 5.3) becomes readable when its process ends: no polling meanwhile (Popen's
    own timed wait wakes up every few milliseconds). With *identity* (not our child, so its
    PID may have been reused) the process is checked to be that one once the pidfd is open.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except AttributeError:  # no pidfd on this platform
        return False
    except OSError:
        return True  # gone already
    try:
        if identity is None or is_alive(identity):
            select.select([pidfd], [], [], timeout)
        return True
    finally:
        os.close(pidfd)


def _wait_for_end(identity: ProcessIdentity, timeout: float) -> None:
    """Return once *identity*'s process (not our child) has ended, or after *timeout* seconds.

    On a pidfd where there is one; elsewhere its liveness is asked every 20 ms.
    """
    if _until_ended(identity.pid, timeout, identity):
        return
    deadline = time.monotonic() + timeout
    while is_alive(identity) and time.monotonic() < deadline:
        time.sleep(0.02)


def adopt(
    identity: ProcessIdentity, *, log_path: Path, started_at: float, workdir: Path | None = None
) -> AdoptedProcess:
    """Supervise an agent recorded by a previous manager (alive or not), started in *workdir*.

    The secrets of a live one's environment are redacted from then on (that manager's shell's).
    """
    learn_secrets(identity)
    return AdoptedProcess(
        identity=identity,
        log_path=log_path,
        started_at=started_at,
        record=record_path(log_path),
        workdir=workdir,
    )


def _dirs(workdir: Path | None) -> tuple[Path, ...]:
    return () if workdir is None else (workdir,)


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    grace: float = 5.0,
    record: Path | None = None,
    shims: ShimServer | None = None,
    parent: int | None = None,
) -> AgentProcess:
    """Start *argv* under a shim, in its own session, with output appended to *log_path*.

    stdin is /dev/null, stdout and stderr go to the log, and no shell is involved.
    *env* is used as-is: build it with :func:`worktree_swarm.infra.proc.clean_env`. The shim
    (see :mod:`worktree_swarm.infra.shim`) records the exit status in *record* (by default
    :func:`record_path` of the log) and kills the whole tree on SIGTERM with *grace*.
    The identity returned is the shim's; where there is no shim it is *argv*'s own. With
    *shims* the shim is forked by that server, or started as its own program where the
    server is unavailable. With *parent* (not with *shims*) the shim stops the command,
    whole tree, once process *parent* (this one) has died.
    """
    if not argv:
        raise SwarmError("agent command is empty: set `agent` to a command array")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:  # made here, or refused: a named pipe planted there would hold the start at its open
        fs.open_append_bytes(log_path).close()
    except OSError as exc:
        raise SwarmError(f"cannot write the agent's log {log_path}: {exc.strerror}") from exc
    args = [str(a) for a in argv]
    if SHIM_AVAILABLE:
        _check_runnable(args[0], cwd=cwd, env=env)
        record = record or record_path(log_path)
        env = {**env, shim.ENV_VAR: str(record)}
        if shims is not None and parent is None:
            before_start = time.time()
            forked = shims.start(
                args, cwd=cwd, env=env, log_path=log_path, record=record, grace=grace
            )
            if forked is not None:
                identity = identity_of(forked.pid) or ProcessIdentity(
                    pid=forked.pid, create_time=before_start, pgid=forked.pid
                )
                return AgentProcess(
                    identity=identity,
                    popen=None,
                    log_path=log_path,
                    started_at=before_start,
                    record=record,
                    forked=forked,
                    workdir=cwd,
                )
        args = [
            sys.executable, *shim_record.SHIM_FLAGS, "-c", shim_record.SHIM_LAUNCH, shim.MARKER,
            "--record", str(record), "--grace", repr(float(grace)),
            *(["--parent", str(parent)] if parent is not None else []), "--", *args,
        ]  # fmt: skip
    else:
        record = None
    before_start = time.time()
    with fs.open_append_bytes(log_path) as log:
        try:
            popen = subprocess.Popen(
                args,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise not_started(argv[0], cwd, exc.errno, exc.strerror or str(exc)) from exc
    # Not yet reaped, so the PID is still ours even if the agent already exited;
    # start_new_session makes it the leader of a group with its own PID.
    identity = identity_of(popen.pid) or ProcessIdentity(
        pid=popen.pid, create_time=before_start, pgid=popen.pid
    )
    return AgentProcess(
        identity=identity,
        popen=popen,
        log_path=log_path,
        started_at=before_start,
        record=record,
        workdir=cwd,
    )


class Cut(enum.StrEnum):
    """Why :func:`run_to_end` ended a process early."""

    TIMED_OUT = "timed out"
    STOPPED = "stopped"
    PAST_MAX_LOG = "printed past max_log"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """How a process run by :func:`run_to_end` ended: its exit code, or why it was cut."""

    code: int | None
    cut: Cut | None = None


def run_to_end(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float | None,
    stop: threading.Event | None = None,
    grace: float = 5.0,
    record: Path | None = None,
    on_start: Callable[[ProcessIdentity], None] | None = None,
    max_log: int | None = None,
) -> Finished:
    """Run *argv* like :func:`spawn` and wait for it, killing its tree on timeout or *stop*.

    An exception while waiting (Ctrl-C) kills the tree too before it propagates. *on_start*
    is handed the identity of the process started (a guard registers it). Past *max_log*
    bytes appended to *log_path* it is killed too: one printing in a loop would fill the disk.
    """
    limit = None if max_log is None else max(fs.size_of(log_path), 0) + max_log
    proc = spawn(argv, cwd=cwd, env=env, log_path=log_path, grace=grace, record=record)
    deadline = None if timeout is None else time.monotonic() + timeout
    ended = False
    try:
        if on_start is not None:
            on_start(proc.identity)
        while True:
            code = proc.wait(_STEP_POLL)
            if code is not None or not proc.alive():
                ended = True
                code = proc.wait(0) if code is None else code
                if limit is not None and fs.size_of(log_path) > limit:  # between two looks
                    return Finished(code=code, cut=Cut.PAST_MAX_LOG)
                return Finished(code=code)
            cut = None
            if stop is not None and stop.is_set():
                cut = Cut.STOPPED
            elif deadline is not None and time.monotonic() >= deadline:
                cut = Cut.TIMED_OUT
            elif limit is not None and fs.size_of(log_path) > limit:
                cut = Cut.PAST_MAX_LOG
            if cut is not None:
                proc.stop(grace=grace)
                ended = True
                return Finished(code=None, cut=cut)
    finally:
        if not ended:
            proc.stop(grace=grace)


def _check_runnable(program: str, *, cwd: Path, env: Mapping[str, str]) -> None:
    """Raise the error Popen would have raised, since the shim starts *program* out of sight."""
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else cwd / program
        found = path.is_file() and os.access(path, os.X_OK)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise SwarmError(
            f"cannot start agent {program!r} in {cwd}: not found or not executable; "
            "check that it is installed and on PATH"
        )
