"""Process identities, liveness, and stopping a whole process tree.

A PID alone is not an identity: the kernel reuses PIDs. Every process we track is
recorded as ``ProcessIdentity(pid, create_time, pgid)`` and checked against the live
process before it is signalled, so a stale record never hits an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import redact, shim, starts
from worktree_swarm.infra.shim_record import SHIM_AVAILABLE, read_record

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

# A start time (starts.py) is the start in clock ticks (0.01s on Linux) plus a boot time
# that no step of the wall clock moves; a process of an older swarm recorded psutil's,
# whose boot time /proc/stat gives in whole seconds, so two readings of one process can
# differ by up to a second. A reused PID within that window would need the whole PID
# space to wrap while our agent lived under a second.
CREATE_TIME_TOLERANCE = 1.0
_POLL_INTERVAL = 0.05
# After SIGKILL only an uninterruptible sleep (e.g. a hung NFS read) keeps a process.
KILL_TIMEOUT = 10.0


def identity_of(pid: int) -> ProcessIdentity | None:
    """Return the identity of the process *pid*, or None if there is no such process."""
    create_time = starts.start_time(pid)
    if create_time is None:
        return None
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return None
    return ProcessIdentity(pid=pid, create_time=create_time, pgid=pgid)


def found_identity(process: psutil.Process) -> ProcessIdentity | None:
    """The identity of *process* as found: its start time, not that of its PID's process now.

    None when it has ended, or its PID is another process's now.
    """
    try:
        create_time = starts.of(process)
        if not process.is_running():  # the PID is another process's now (psutil's check)
            return None
        pgid = os.getpgid(process.pid)
    except (psutil.Error, ProcessLookupError):
        return None
    return ProcessIdentity(pid=process.pid, create_time=create_time, pgid=pgid)


def is_alive(identity: ProcessIdentity) -> bool:
    """Return whether *identity*'s process still runs (same PID and start, not a zombie)."""
    proc = _matching(identity)
    return proc is not None and running(proc)


def is_frozen(identity: ProcessIdentity) -> bool:
    """Whether *identity*'s process is stopped (Ctrl-Z, SIGSTOP, a debugger): alive, idle."""
    proc = _matching(identity)
    try:
        return proc is not None and proc.status() in {
            psutil.STATUS_STOPPED,
            psutil.STATUS_TRACING_STOP,
        }
    except psutil.Error:
        return False


def running_pids() -> set[int]:
    """The PIDs in use now (a process alive later and started earlier is among them)."""
    return set(psutil.pids())


def descendants(identity: ProcessIdentity) -> list[psutil.Process]:
    """Return the live descendants of *identity*'s process ([] if it is gone)."""
    proc = _matching(identity)
    return [] if proc is None else _children(proc)


def shim_alive(record: Path) -> bool:
    """Whether the shim that wrote *record* still runs."""
    recorded = read_record(record)
    if recorded is None:
        return False
    try:
        proc = psutil.Process(recorded.shim_pid)
        if recorded.start_ticks is not None:
            same = shim.start_ticks(recorded.shim_pid) == recorded.start_ticks
        else:  # started_at: the wall clock's, stamped after the interpreter started
            same = abs(proc.create_time() - recorded.started_at) <= CREATE_TIME_TOLERANCE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return same and running(proc) and _shim_grace(proc) is not None


def is_shim_of(identity: ProcessIdentity, record: Path) -> bool:
    """Whether *identity*'s process runs as the shim that writes *record*.

    A shim started with its record names it (``--record``); one the shim server forked has
    the server's command line (the server's own output is its socket) and writes its output
    to a log in its record's folder.
    """
    proc = _matching(identity)
    if proc is None or not running(proc) or _shim_grace(proc) is None:
        return False
    mine = os.path.realpath(record)
    try:
        cmdline = proc.cmdline()
        options = cmdline[cmdline.index(shim.MARKER) :]
        options = options[: options.index("--")] if "--" in options else options
        if "--record" in options:
            named = options[options.index("--record") + 1]
            if not os.path.isabs(named):  # noqa: PTH117
                named = os.path.join(proc.cwd(), named)  # noqa: PTH118
            return os.path.realpath(named) == mine
        log = os.readlink(f"/proc/{proc.pid}/fd/1")  # noqa: PTH115
    except (psutil.Error, OSError, ValueError, IndexError):
        return False
    return Path(log).parent == Path(mine).parent


def learn_secrets(identity: ProcessIdentity) -> None:
    """Have this process's redactor replace the secret values of *identity*'s environment too.

    A command that adopts or ends an agent (``swarm resume``, ``swarm stop``) may run from a
    shell without the variables of the manager that started it; while the agent lives, the
    kernel still holds them: in its environment, or its shim's command's (a shim forked by the
    shim server has the server's). Read here, kept nowhere. Never a process the shim adopted
    (:func:`_command_of`): an agent's daemon would choose what swarm redacts.
    """
    leader = _matching(identity)
    if leader is None or not running(leader):
        return
    pairs: list[tuple[str, str]] = []
    for proc in [leader, *_command_of(leader)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            pairs += proc.environ().items()
    redact.add_env(pairs)


def _command_of(leader: psutil.Process) -> list[psutil.Process]:
    """The command the shim *leader* started itself, if it still runs; none for an agent's own.

    Its eldest child started after it, carrying the shim's mark (its record, where *leader*
    carries it too), while that record says the command runs: a shim is a child subreaper,
    so what its command's tree double-forks becomes its child as well, later, with whatever
    environment the agent gave it.
    """
    if _shim_grace(leader) is None:  # the agent itself: its children are its own
        return []
    try:
        born = leader.create_time()
        mark = leader.environ().get(shim.ENV_VAR)
        kids = [(c.create_time(), c.pid, c) for c in leader.children()]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    kids = [k for k in kids if k[0] >= born - CREATE_TIME_TOLERANCE]
    if not kids:
        return []
    eldest = min(kids, key=lambda k: k[:2])[2]
    try:
        carried = eldest.environ().get(shim.ENV_VAR)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    if carried is None or carried != (mark or carried):
        return []
    recorded = read_record(Path(carried))
    ended = recorded is None or recorded.shim_pid != leader.pid or recorded.ended_at is not None
    return [] if ended else [eldest]


def kill_tree(identity: ProcessIdentity, *, grace: float, within: Sequence[Path] = ()) -> None:
    """Stop *identity*'s process and everything it started.

    SIGTERM goes to the process group and to every descendant (some may have left the
    group with setsid); whatever is still running at the single *grace* deadline gets
    SIGKILL. Returns once all are gone; zombies count as gone, so an unreaped child of
    the caller does not block (reap it with its Popen). Works on processes that are not
    the caller's children. Raises SwarmError if some process survives SIGKILL. *within*:
    the directories its tree works in (the task's worktree), which tell a group whose
    leader is gone to be its own (see :func:`_owns_group`).
    """
    learn_secrets(identity)  # what it printed is redacted next, maybe by another shell's swarm
    leader = _matching(identity)
    if leader is not None and running(leader):
        shim_grace = _shim_grace(leader)
        if shim_grace is not None:
            # The shim kills its tree itself and catches what forks meanwhile; killing it
            # first would hand its not-yet-killed descendants to init. Only a hung or
            # killed shim leaves work for the group and snapshot kill below.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                leader.send_signal(signal.SIGTERM)
            wait = max(grace, shim_grace) + KILL_TIMEOUT
            _wait_gone([leader], None, time.monotonic() + wait)
    deadline = time.monotonic() + grace
    # Snapshot before signalling: once the leader dies its children are reparented
    # and can no longer be found through it.
    tree = [] if leader is None else [leader, *_children(leader)]
    pgid = identity.pgid if _owns_group(identity, leader, within) else None
    _signal(tree, pgid, signal.SIGTERM)
    survivors = _wait_gone(tree, pgid, deadline)
    if not survivors:
        return
    # Survivors may have forked since the snapshot.
    tree = _unique([*survivors, *(c for p in survivors for c in _children(p))])
    # An emptied group's number could be handed out again: only signal a populated one.
    if pgid is not None and not _group_members(pgid):
        pgid = None
    _signal(tree, pgid, signal.SIGKILL)
    survivors = _wait_gone(tree, pgid, time.monotonic() + KILL_TIMEOUT)
    if survivors:
        pids = ", ".join(str(p.pid) for p in survivors)
        raise SwarmError(
            f"processes {pids} of agent pid {identity.pid} did not exit after SIGKILL; "
            "they are probably stuck in the kernel (check `ps -o pid,stat,wchan`)"
        )


def _shim_grace(proc: psutil.Process) -> float | None:
    """The grace period *proc* was given if it is one of our shims, else None."""
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if shim.MARKER not in cmdline[:6] or "--grace" not in cmdline:
        return None
    try:
        return float(cmdline[cmdline.index("--grace") + 1])
    except (IndexError, ValueError):
        return None


def _matching(identity: ProcessIdentity) -> psutil.Process | None:
    """Return the process *identity* names (possibly a zombie), or None if the PID was reused.

    Its start is compared as swarm records it (the boot time kept for this boot), and also as
    psutil reads it now: swarm before the kept boot time recorded that, and a manager or an
    agent of such a swarm still running after an upgrade must not be taken for gone (the two
    differ by every step of the wall clock since the boot time was kept).
    """
    try:
        proc = psutil.Process(identity.pid)
        create_time = starts.of(proc)
        if abs(create_time - identity.create_time) <= CREATE_TIME_TOLERANCE:
            return proc
        if abs(proc.create_time() - identity.create_time) <= CREATE_TIME_TOLERANCE:
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return None


def running(proc: psutil.Process) -> bool:
    """Return whether *proc* (still the same process) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in proc.children(recursive=True) if running(c)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _owns_group(
    identity: ProcessIdentity, leader: psutil.Process | None, within: Sequence[Path]
) -> bool:
    """Return whether signalling *identity*'s process group can only hit its tree."""
    # Only a group the process leads is its own: otherwise the group belongs to
    # whoever started it (possibly our own shell or manager).
    if identity.pgid != identity.pid or identity.pgid == os.getpgrp():
        return False
    if leader is not None:
        try:
            return os.getpgid(leader.pid) == identity.pgid
        except ProcessLookupError:
            return True  # a zombie leader on macOS; its group is still its own
    if psutil.pid_exists(identity.pid):
        return False  # the PID was reused, so our group emptied before that
    # The kernel never reuses a PID that is still a process-group id, so members of a
    # group numbered like our dead leader started after it are its descendants, unless
    # the group emptied and its number was taken again by a new session (a daemon's
    # double fork: its leader gone, its members all started later).
    members = _group_members(identity.pgid)
    if not members or any(
        _create_time(m) < identity.create_time - CREATE_TIME_TOLERANCE for m in members
    ):
        return False
    # Where every recorded process is a shim, one of its tree's still carries its mark, or
    # (its environment wiped: `env -i`) works where the tree works in the shim's session
    # (a shim leads a session of its own: a user's shell job that took the group's number,
    # a pager left in a task's worktree, is in the shell's session).
    roots = [Path(os.path.realpath(d)) for d in within]
    return not SHIM_AVAILABLE or any(
        _marked_by(m, identity.pid) or (_in_session(m, identity.pid) and _works_in(m, roots))
        for m in members
    )


def _in_session(proc: psutil.Process, sid: int) -> bool:
    """Whether *proc* is in the session *sid* leads (led)."""
    try:
        return os.getsid(proc.pid) == sid
    except OSError:
        return False


def _marked_by(proc: psutil.Process, shim_pid: int) -> bool:
    """Whether *proc* carries the mark of a shim whose record names *shim_pid* as its PID."""
    try:
        marker = proc.environ().get(shim.ENV_VAR)
    except (psutil.Error, OSError):
        return False
    recorded = read_record(Path(marker)) if marker else None
    return recorded is not None and recorded.shim_pid == shim_pid


def _works_in(proc: psutil.Process, roots: Sequence[Path]) -> bool:
    """Whether *proc*'s working directory is one of *roots* or inside one."""
    if not roots:
        return False
    try:
        cwd = Path(proc.cwd())  # psutil drops the " (deleted)" of a removed directory
    except (psutil.Error, OSError):
        return False
    return any(cwd.is_relative_to(root) for root in roots)


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            proc = psutil.Process(pid)
        except (OSError, psutil.NoSuchProcess):
            continue
        if running(proc):
            members.append(proc)
    return members


def _create_time(proc: psutil.Process) -> float:
    try:
        return starts.of(proc)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return float("inf")


def _signal(tree: Iterable[psutil.Process], pgid: int | None, sig: signal.Signals) -> None:
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for proc in tree:
        # psutil refuses (NoSuchProcess) when the PID was reused since the snapshot.
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def _wait_gone(
    tree: Sequence[psutil.Process], pgid: int | None, deadline: float
) -> list[psutil.Process]:
    """Poll until *tree* and group *pgid* are gone or *deadline* passes; return survivors."""
    while True:
        alive = [p for p in tree if running(p)]
        if pgid is not None:
            alive += _group_members(pgid)
        if not alive or time.monotonic() >= deadline:
            return _unique(alive)
        time.sleep(_POLL_INTERVAL)


def _unique(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    return list({p.pid: p for p in procs}.values())
