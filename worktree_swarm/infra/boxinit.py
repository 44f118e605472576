"""PID 1 of an agent's sandbox: the box lives exactly as long as the agent's main process.

bubblewrap runs it with ``--as-pid-1`` as ``python -I -S -c LAUNCH -- ARGV...`` (LAUNCH imports
this file by its directory and calls :func:`run`, as the shim's does). It starts ARGV, reaps
whatever is re-parented to it, passes on to ARGV the signals it is sent (``swarm stop``'s
SIGTERM), and exits as soon as ARGV has, with its code (128+N for a signal N, as bwrap's
init). When PID 1 of a namespace exits, the kernel kills every process left in it.

It makes itself non-dumpable first: the agent (the same user, without capabilities) can then
neither ptrace it nor write its memory through ``/proc/1/mem``. bwrap's own init is dumpable:
an agent that stopped it with ``PTRACE_ATTACH`` kept it from ever seeing the agent end, and
the box, with what the agent left running in it, lived on. A tracer the agent left on itself
hides its exit from its parent, which waits too: a pidfd of the agent tells its end all the
same. Standard library only, like the
shim, and as little of it: every sandboxed attempt starts one.
"""

import _ctypes
import posix
import select
import sys

signal = __import__("_signal")

_PR_SET_DUMPABLE = 4
# What PID 1 is sent and passes on. Any other signal it leaves pending: PID 1 gets no default
# action from the kernel, so none would end it.
_FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip
# As the shim starts a command: no signal ignored or blocked.
_DEFAULTED = tuple(s for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
_USAGE = 2
_LOOK_EVERY = 0.25  # seconds between looks at the agent when no signal comes
_EXIT_CODE_FIELD = 49  # of /proc/PID/stat after the name: field 52, the exit status
_NOT_STARTED = 127


def main(argv: list[str]) -> int:
    """Run the command after ``--`` in *argv* as PID 1's only child; its exit code."""
    if argv[:1] != ["--"] or len(argv) < 2:  # noqa: PLR2004
        sys.stderr.write("usage: boxinit.py -- ARGV...\n")
        return _USAGE
    if not _undumpable():
        sys.stderr.write("swarm box init: cannot make itself non-dumpable\n")
        return _NOT_STARTED
    waited = {signal.SIGCHLD, *_FORWARDED}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    command = argv[1:]
    try:
        child = posix.posix_spawnp(
            command[0], command, posix.environ, setsigmask=(), setsigdef=_DEFAULTED
        )
    except OSError as exc:
        sys.stderr.write(f"swarm: cannot start {command[0]!r}: {exc.strerror or exc}\n")
        return _NOT_STARTED
    ended = _ended_watch(child)
    while True:
        info = signal.sigtimedwait(waited, _LOOK_EVERY)
        if info is not None and info.si_signo != signal.SIGCHLD:
            posix.kill(child, info.si_signo)  # not reaped yet, so its PID is still its own
            continue
        status = _reap(child)
        if status is None and ended is not None and _readable(ended):
            # Exited, but traced: the kernel keeps that from its parent until the tracer (a
            # process the agent left in the box) lets go. PID 1 ends, and the box with it.
            status = _exit_status(child)
        if status is not None:
            code = posix.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def _ended_watch(child: int) -> int | None:
    """A pidfd of *child*: readable once it exited, even while a tracer hides it (None: none)."""
    try:
        return posix.pidfd_open(child)
    except (OSError, AttributeError):  # Linux before 5.3: SIGCHLD alone, as bwrap's init
        return None


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _exit_status(child: int) -> int:
    """The wait status of *child*, a zombie its tracer holds (from its ``stat``; else killed)."""
    try:
        fd = posix.open(f"/proc/{child}/stat", posix.O_RDONLY)
        try:
            fields = posix.read(fd, 4096).rpartition(b")")[2].split()
        finally:
            posix.close(fd)
        return int(fields[_EXIT_CODE_FIELD])
    except (OSError, ValueError, IndexError):
        return int(signal.SIGKILL)  # as a wait status: killed by SIGKILL


def _undumpable() -> bool:
    try:
        # dlopen(NULL): the program and its libraries, libc's prctl among them.
        prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")  # type: ignore[arg-type]
        return bool(_ctypes.call_function(prctl, (_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0)
    except (OSError, AttributeError):
        return False


def _reap(child: int) -> int | None:
    """Reap every exited child (the orphans of the box are PID 1's); *child*'s wait status."""
    found = None
    while True:
        try:
            pid, status = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


def run() -> None:
    """Run on this process's arguments and exit with the command's code."""
    # os._exit where os is loaded anyway (coverage patches it to save its data first).
    getattr(sys.modules.get("os"), "_exit", posix._exit)(main(sys.argv[1:]))  # noqa: SLF001
